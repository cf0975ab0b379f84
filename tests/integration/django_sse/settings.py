"""Settings of the test Django project: django-eventstream with its database storage (SQLite
file from the environment) publishing to the gripcast cluster named by ``GRIP_URL``."""

import os

SECRET_KEY = "gripcast-test-secret-key-only-for-tests-0123456789"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django_eventstream",
]
MIDDLEWARE = [
    "django_grip.GripMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "tests.integration.django_sse.urls"
DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["DJANGO_SSE_DB"]}
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
# the GRIP proxy: its publish API, and the key its Grip-Sig is signed with (gripcast's default
# sig_key/sig_iss), so that only requests through the proxy count as proxied
GRIP_URL = os.environ["GRIP_URL"]
EVENTSTREAM_STORAGE_CLASS = "django_eventstream.storage.DjangoModelStorage"
LOGGING = {"version": 1, "disable_existing_loggers": False}

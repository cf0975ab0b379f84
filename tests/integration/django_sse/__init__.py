"""A small Django project on django-eventstream, run behind gripcast by test_django_eventstream.py."""

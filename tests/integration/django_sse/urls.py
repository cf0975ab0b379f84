import django_eventstream
from django.http import HttpResponse
from django.urls import include, path
from django_eventstream import send_event


def send(request):
    """Publish one event to channel ``test`` (``?text=...``), the way an app does."""
    send_event("test", "message", request.GET["text"], async_publish=False)
    return HttpResponse("sent\n", content_type="text/plain")


urlpatterns = [
    path("events/", include(django_eventstream.urls), {"channels": ["test"]}),
    path("send/", send),
]

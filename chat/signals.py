"""Account events that reach open sockets: logout and deactivation."""

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db.models.signals import post_save
from django.dispatch import receiver

from chat import protocol
from chat.models import Message


@receiver(user_logged_out)
def close_sockets_of_the_session(sender, request, user, **kwargs):
    session_key = request.session.session_key if request is not None else None
    if session_key:
        async_to_sync(get_channel_layer().group_send)(
            protocol.session_group(session_key),
            protocol.account_closed_event("logged_out", "You logged out."),
        )


@receiver(post_save, sender=get_user_model())
def stop_everything_of_a_deactivated_user(sender, instance, created, **kwargs):
    if created or instance.is_active:
        return
    async_to_sync(get_channel_layer().group_send)(
        protocol.user_group(instance.pk),
        protocol.account_closed_event("account_disabled", "This account has been deactivated."),
    )
    from chat.worker import get_worker

    unfinished = Message.objects.owned_by(instance).unfinished().values_list("id", flat=True)
    for message_id in unfinished:
        get_worker().request_stop(message_id)

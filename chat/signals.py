"""Account events that reach open sockets: logout and deactivation."""

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
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
    from chat.worker import request_stop

    # A request only, made once the deactivation is committed (a save rolled back asks nothing):
    # each answer's own thread, in whichever process, saves it as cancelled. This thread may be an
    # admin request's, inside its transaction, a shell's or a command's: no answer's work here,
    # and no worker started. Should the request fail, the generating process still stops them:
    # it also stops the answers of inactive owners (MessageQuerySet.stop_requested).
    transaction.on_commit(lambda: request_stop(Message.objects.owned_by(instance)), robust=True)

"""Account events that reach open sockets, and the stopping of a deactivated user's answers.

A socket's authority is its session, checked by the socket itself (chat/authority.py) before every
frame and periodically; these events only make the end prompt. Each is sent once the change is
committed: a socket told inside the admin's transaction would read the account as it was.
"""

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from chat import protocol
from chat.models import Conversation, Message
from chat.runtime import current


def tell_sockets_after_commit(group, event):
    """Send `event` to a group of sockets once the current transaction (if any) commits. A
    channel layer that cannot be reached must not undo the change (robust): the sockets find out
    at their next check."""

    def send():
        async_to_sync(get_channel_layer().group_send)(group, event)

    transaction.on_commit(send, robust=True)


@receiver(user_logged_out)
def close_sockets_of_the_session(sender, request, user, **kwargs):
    session_key = request.session.session_key if request is not None else None
    if session_key:
        tell_sockets_after_commit(protocol.session_group(session_key), protocol.account_closed_event("logged_out"))


@receiver(post_save, sender=get_user_model())
def recheck_sockets_of_a_changed_user(sender, instance, created, update_fields=None, **kwargs):
    """A password change, a deactivation, anything that may end the user's sessions: every socket
    of the user checks its own session (the one whose key was just renewed ends and reconnects).
    A login, which only stamps last_login, changes nothing a session depends on."""
    if created or (update_fields is not None and set(update_fields) <= {"last_login"}):
        return
    tell_sockets_after_commit(protocol.user_group(instance.pk), protocol.session_check_event())


@receiver(post_delete, sender=get_user_model())
def recheck_sockets_of_a_deleted_user(sender, instance, **kwargs):
    tell_sockets_after_commit(protocol.user_group(instance.pk), protocol.session_check_event())


@receiver(post_save, sender=get_user_model())
def stop_everything_of_a_deactivated_user(sender, instance, created, **kwargs):
    if created or instance.is_active:
        return
    # A request only, made once the deactivation is committed (a save rolled back asks nothing):
    # each answer's own thread, in whichever process, saves it as cancelled. This thread may be an
    # admin request's, inside its transaction, a shell's or a command's: no answer's work here,
    # and no worker started. Should the request fail, the generating process still stops them:
    # it also stops the answers of inactive owners (MessageQuerySet.stop_requested).
    transaction.on_commit(lambda: current().request_stop(Message.objects.owned_by(instance)), robust=True)


@receiver(post_save, sender=Conversation)
def show_a_changed_row_in_every_tab(sender, instance, created, update_fields=None, **kwargs):
    """Pinned, archived or restored: every tab of the owner moves the row.
    Saves that change nothing the sidebar shows (a new message's touch, the current path) send
    nothing; a new conversation reaches the tab that made it through its own frames."""
    if created or (update_fields is not None and not Conversation.SIDEBAR_FIELDS & set(update_fields)):
        return
    event = protocol.conversation_updated_event(instance.sidebar_item())
    tell_sockets_after_commit(protocol.user_group(instance.owner_id), event)

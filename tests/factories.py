"""Conversations and messages built straight in the database, for tests that need history."""

from chat.models import Conversation, Message, UsageEntry


def conversation_with_answer(
    owner,
    question="What is a river?",
    answer="Flowing water.",
    *,
    title=None,
    status=Message.Status.COMPLETED,
    model="test-model",
    tokens=(10, 5),
    **answer_fields,
):
    conversation = Conversation.objects.create(owner=owner, title=title or question[:60], model=model)
    question_row = Message.objects.create(conversation=conversation, role=Message.Role.USER, text=question)
    input_tokens, output_tokens = tokens
    answer_row = Message.objects.create(
        conversation=conversation,
        parent=question_row,
        role=Message.Role.ASSISTANT,
        text=answer,
        status=status,
        model=model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=input_tokens + output_tokens,
        cached_tokens=0,
        reasoning_tokens=0,
        **answer_fields,
    )
    conversation.move_to(answer_row, touch=False)
    # An answer that ended is in the ledger, as the worker leaves it (one still running is not yet).
    UsageEntry.objects.record(answer_row)
    return conversation

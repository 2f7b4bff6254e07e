"""What the model answers to a title request, as the title stored (chat/answering/titles.py)."""

import pytest

from chat.answering.titles import clean_title
from chat.models import TITLE_LENGTH


@pytest.mark.parametrize(
    ("reply", "title"),
    [
        ("Sky colours", "Sky colours"),
        ('"Sky colours."', "Sky colours"),
        ("“Por qué el cielo es azul”.", "Por qué el cielo es azul"),
        ("«Pourquoi le ciel est bleu»", "Pourquoi le ciel est bleu"),
        ("「空が青い理由」。", "空が青い理由"),
        ("Title: Rivers and their sources", "Rivers and their sources"),
        ("**Rivers and seas**", "Rivers and seas"),
        ("# Rivers", "Rivers"),
        ("\n\n  Rivers   and\tseas  \nA second line the model added.", "Rivers and seas"),
        ("<think>The user asks about rivers.</think>\nRivers explained", "Rivers explained"),
        ("Why is the sky blue?", "Why is the sky blue?"),
        ("<think>Still thinking when the tokens ran out", ""),
        ("", ""),
        ("  “ . ”  ", ""),
        ("Sky\x00blue", "Sky blue"),
        ("\u202eSky \u2066blue\u2069", "Sky blue"),
        ("Sky\ud800 \x1b[31mblue\x7f", "Sky [31mblue"),
        ("<b>Bold</b> & co", "<b>Bold</b> & co"),
        ("👨\u200d👩\u200d👧 می\u200cخواهم", "👨\u200d👩\u200d👧 می\u200cخواهم"),
        ("\x00\u202e", ""),
    ],
)
def test_a_reply_becomes_a_title(reply, title):
    assert clean_title(reply) == title


def test_a_long_reply_is_cut_to_the_title_field():
    title = clean_title("word " * 100)
    assert len(title) == TITLE_LENGTH and title.endswith("…")

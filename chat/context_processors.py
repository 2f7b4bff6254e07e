"""Template context every page needs."""

from chat.models import AccountSettings


def account_theme(request):
    """The signed-in user's theme, which base.html puts on <html> before the first paint.

    `account_theme` is None for a visitor (the browser keeps the choice), "" for a user who
    follows the system, else "light" or "dark".
    """
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"account_theme": None}
    return {"account_theme": AccountSettings.of(user).theme}

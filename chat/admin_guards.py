"""Query parameters of the admin's change lists: honoured exactly, or answered 400.

Django's change list skips an ordering it cannot parse, falls back to page 1, redirects to `?e=1`
on a value of the wrong type, and lets the database meet whatever else it is given (an invalid
regular expression answered 500 with the debug page). Every change list of this site uses
StrictChangeList instead, through StrictAdminMixin on every ModelAdmin (tests/test_audit.py checks
that each registered admin does).

StrictAdminMixin also refuses, in every admin, lookups in the query string that reach transcript
text (chat.models.transcript_text_fields(), through any relation) and regular-expression lookups
on any field. A lookup is a yes/no question about a row's field that the list answers by showing
or hiding the row: `?text__startswith=` spelled out a secret one character at a time. Regular
expressions are refused everywhere because their cost is the pattern's to choose.
"""

import contextlib
import logging
import re

from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ORDER_VAR, PAGE_VAR, ChangeList
from django.core.exceptions import BadRequest, FieldDoesNotExist
from django.db import DataError, NotSupportedError, connections, router, transaction
from django.db.models.constants import LOOKUP_SEP

from chat.models import transcript_text_fields

logger = logging.getLogger(__name__)

REFUSED_LOOKUPS = {"regex", "iregex"}


class BadAdminQuery(BadRequest):
    """A change-list parameter the list cannot honour; Django answers it 400."""


def lookup_path(model, lookup):
    """(the fields `lookup` walks through, the rest: transforms and lookups or unknown names)."""
    fields = []
    parts = lookup.split(LOOKUP_SEP)
    for index, part in enumerate(parts):
        try:
            field = model._meta.get_field(part)
        except FieldDoesNotExist:
            return fields, parts[index:]
        fields.append(field)
        if not field.is_relation:
            return fields, parts[index + 1 :]
        model = field.related_model
    return fields, []


class StrictChangeList(ChangeList):
    def __init__(self, request, *args, **kwargs):
        page = request.GET.get(PAGE_VAR)
        if page is not None and not re.fullmatch(r"0*[1-9][0-9]*", page):
            raise BadAdminQuery(f"Pages are numbered from 1, not {page!r}.")
        try:
            super().__init__(request, *args, **kwargs)
        except IncorrectLookupParameters as error:
            raise BadAdminQuery(f"These filters cannot be applied: {error}") from error

    def get_ordering(self, request, queryset):
        for part in filter(None, (self.params.get(ORDER_VAR) or "").split(".")):
            match = re.fullmatch(r"-?([0-9]+)", part)
            column = self.list_display[int(match[1])] if match and int(match[1]) < len(self.list_display) else None
            sortable = column is not None and (self.sortable_by is None or column in self.sortable_by)
            if not sortable or not self.get_ordering_field(column):
                raise BadAdminQuery(f"The list cannot be sorted by {part!r}.")
        return super().get_ordering(request, queryset)

    def get_results(self, request):
        """Count and fetch the page here rather than while the template renders, so that a value
        the database refuses (a number out of its range, a NUL byte in PostgreSQL) or a lookup it
        cannot do (`?shown__contains=` on SQLite) is a 400 too."""
        alias = router.db_for_read(self.model)
        # In a transaction (tests, ATOMIC_REQUESTS) PostgreSQL aborts it on an error: a savepoint
        # keeps it usable. Outside one, none is opened: on SQLite it would take the write lock.
        savepoint = transaction.atomic(using=alias) if connections[alias].in_atomic_block else contextlib.nullcontext()
        try:
            with savepoint:
                super().get_results(request)
                len(self.result_list)  # evaluates the page's query and keeps its rows
        except (DataError, NotSupportedError, OverflowError) as error:
            logger.info("A change list query was refused by the database: %s", error)
            raise BadAdminQuery(f"The database cannot compare with these values: {error}") from error


class StrictAdminMixin:
    """For every ModelAdmin of the site: the strict change list, and no probing lookups."""

    def get_changelist(self, request, **kwargs):
        return StrictChangeList

    def lookup_allowed(self, lookup, value, request=None):
        fields, rest = lookup_path(self.model, lookup)
        if not transcript_text_fields().isdisjoint(fields):
            return False
        if not REFUSED_LOOKUPS.isdisjoint(rest):
            return False
        return super().lookup_allowed(lookup, value, request)

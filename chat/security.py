"""The Content Security Policy: scripts only from this site, no inline script, no eval.

django-csp sends the header; this subclass relaxes one directive for the Django admin only,
whose templates carry inline style attributes. The chat pages run under the strict policy.
"""

from csp.middleware import CSPMiddleware

ADMIN_PREFIX = "/admin/"


class ContentSecurityPolicyMiddleware(CSPMiddleware):
    def get_policy_parts(self, request, response, report_only=False):
        parts = super().get_policy_parts(request, response, report_only)
        if request.path.startswith(ADMIN_PREFIX) and not report_only:
            parts.update = {**(parts.update or {}), "style-src": ["'unsafe-inline'"]}
        return parts

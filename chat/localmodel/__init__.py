"""A small bundled model served as an Open Responses endpoint by the site itself.

The site consumes it exactly like a remote provider (requests -> SSE -> worker -> websocket), so a
fresh install chats with no API key and no network. See docs/local-model.md.
"""

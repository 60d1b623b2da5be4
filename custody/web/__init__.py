"""The web pages (网页端) for parents, institutions and regulators: server-rendered Django templates with htmx
where a page updates in place, no front-end build step.

Views are thin, as the API's are: they parse a form, call one service or selector (the same ones the API
calls, under the same permission rules: ``custody.api.permissions`` and ``custody.selectors.access``), and
render. ``forms.apply_error`` maps a ``CustodyError`` to the form field it names, once. docs/web.md describes
the pages, the demo and the browser tests.
"""

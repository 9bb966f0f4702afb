"""A web page to review history: mount it in Starlette or FastAPI, or register it in Flask.

* :func:`review_app` — ``app.mount("/audit", review_app(Session, authorize=...))`` (Starlette,
  FastAPI; the ``review`` extra: ``pip install 'sqlalchemy-versioning[review]'``).
* :func:`versioning.integrations.flask.review_blueprint` — the same pages for Flask.

The pages: activity (filters in the URL, keyset pages, grouped by transaction), one transaction,
one record (timeline with a diff per version, "as it was at" a moment), integrity (newest seal,
digest download, verification on demand) and exports (CSV, JSON Lines) of the current filter.
They need no JavaScript and send a Content-Security-Policy forbidding any script. See
docs/review-page.md.

The modules: :mod:`~versioning.integrations.review.query` (query parameters to checked filters),
:mod:`~versioning.integrations.review.pages` (the pages, framework-free),
:mod:`~versioning.integrations.review.csrf` (the restore form's token) and
:mod:`~versioning.integrations.review.asgi` (the Starlette app).
"""

from __future__ import annotations

from versioning.integrations.review.asgi import review_app

__all__ = ["review_app"]

"""The domain and the plumbing API and workers share. Imports neither FastAPI nor Celery nor
anything of operations (`mysisterdb`): docs/architecture.md draws the rooms."""

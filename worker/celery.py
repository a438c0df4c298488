"""`celery -A worker worker` finds the app here."""

from worker.app import create_app

app = create_app()

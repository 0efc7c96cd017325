"""The Celery side of the broker port (`core.ports.Broker`): the app factory, the kombu
transport, and the one class that sends and revokes tasks."""

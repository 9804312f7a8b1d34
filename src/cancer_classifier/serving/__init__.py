"""The web app: the factory (app.py) and what every task's blueprint shares (errors, holder, metrics, monitoring)."""

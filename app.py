"""Entry point for the web app: ``gunicorn app:app`` (see gunicorn.conf.py) or ``python app.py``.

Only exposes the app built by ``cancer_classifier.serving.app.create_app``; run it from the project
folder so config/config.yaml and the pipeline's artifacts are found.
"""

import os

from cancer_classifier.serving.app import create_app

app = create_app()

if __name__ == "__main__":
    # Flask's development server, for trying the app locally; production runs under gunicorn.
    app.run(host="0.0.0.0", port=int(os.environ.get("PORT", "8080")))

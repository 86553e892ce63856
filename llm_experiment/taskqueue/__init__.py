"""The task queue of notebook 10: a manager that keeps tasks in SQLite, and workers that pull them.

``llm-experiment queue serve`` runs the manager (:mod:`.manager`), ``llm-experiment worker`` a worker
(:mod:`.worker`); :mod:`.store` is the SQL that makes it reliable.
"""

"""Built-in stores, installed as ``durable_agent.backends``.

Each module imports only `durable_agent.backend`, `durable_agent.records`,
`durable_agent.errors` and its driver: the same path a custom backend takes.
"""

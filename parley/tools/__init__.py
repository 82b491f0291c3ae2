"""What operators run: the load client, the Python client, the token minter, the start-up reporter.

Nothing in the runtime packages (`parley.engine`, `parley.ingress`, `media`, `deployments`) imports these.
"""

"""The turn engine: one browser's conversation, from microphone audio to spoken answer.

It imports no web server, socket.io, aiortc or Ray: it talks to its transport through the small
protocols in `parley.engine.ports`, and to the models through `parley.engine.services`.
"""

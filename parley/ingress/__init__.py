"""One node's front: the web server, socket.io signalling, WebRTC peers, auth and stores.

It drives the turn engine (`parley.engine`) only through the engine's public methods.
"""

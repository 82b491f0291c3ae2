"""Parley: talk face to face with an AI over WebRTC, served as a Ray Serve application."""

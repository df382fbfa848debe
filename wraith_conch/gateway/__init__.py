"""The SSH server side of the gateway: auth, avatar, session relay."""

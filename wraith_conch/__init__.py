"""wraith_conch: an SSH gateway that holds every command until a reviewer approves it."""

"""The sandbox side of the facade."""

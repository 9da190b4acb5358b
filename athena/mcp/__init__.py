"""The memory API, as an agent's tool server sees it."""

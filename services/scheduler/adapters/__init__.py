"""The scheduler's adapters: implementations of what its use cases need, over asyncpg."""

"""Entry points: thin click commands (audit, train, batch, worker) and the serverless handler."""

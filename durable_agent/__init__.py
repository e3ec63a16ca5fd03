"""durable-agent: LLM agent runs that survive crashes, kills, timeouts and API errors."""

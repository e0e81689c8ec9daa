# The two set-up commands of the README. Both install what they need first (idempotently).
.PHONY: demo test

demo:
	@bash scripts/bootstrap.sh
	.venv/bin/t1 demo

test:
	@bash scripts/bootstrap.sh
	.venv/bin/python -m pytest

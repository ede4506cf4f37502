# The two commands a newcomer needs: `make up` (run it) and `make test` (test it).
.PHONY: up down test logs

up:
	@bash scripts/up.sh

down:
	@bash scripts/down.sh

test:
	@bash scripts/test.sh

# `make logs` follows every component's log; `make logs TASK=<id>` tells one task's story.
logs:
ifdef TASK
	@cargo run --quiet -p agentq-cli -- logs $(TASK)
else
	@tail -n 100 -f .run/lambda.log .run/gateway.log
endif

# The two commands a newcomer needs: `make up` (run it) and `make test` (test it).
.PHONY: up down test logs

up:
	@bash scripts/up.sh

down:
	@bash scripts/down.sh

test:
	@bash scripts/test.sh

logs:
	@tail -n 100 -f .run/lambda.log .run/gateway.log

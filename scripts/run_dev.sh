#!/usr/bin/env bash
# Runs the Django development server and a Celery worker with embedded beat, and stops both on Ctrl-C (or
# when either of them exits). Used by `make run`; expects .venv to be installed and migrated.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=.venv/bin
ADDR="${RUN_ADDR:-127.0.0.1:8000}"

# Job control gives each child its own process group, so the whole group (runserver's autoreloader child,
# Celery's pool processes and beat) can be signalled at once.
set -m
pids=()

stop_all() {
    trap - EXIT INT TERM
    local pid
    # runserver: the autoreloader and its server child, as a group. Celery: only the main process, which
    # stops its pool and beat itself after finishing running tasks (warm shutdown).
    kill -TERM -- "-${pids[0]}" 2>/dev/null || true
    kill -TERM -- "${pids[1]}" 2>/dev/null || true
    # Give everything 15 s, then KILL whatever is left in either process group.
    for _ in $(seq 75); do
        local alive=0
        for pid in "${pids[@]}"; do kill -0 -- "-$pid" 2>/dev/null && alive=1; done
        [[ $alive == 0 ]] && return 0
        sleep 0.2
    done
    for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$BIN/python" manage.py runserver "$ADDR" &
pids+=("$!")
"$BIN/celery" -A config worker -B --scheduler django_celery_beat.schedulers:DatabaseScheduler -l info &
pids+=("$!")

echo "run_dev: server on http://$ADDR (pid ${pids[0]}), celery worker+beat (pid ${pids[1]}); Ctrl-C stops both"
# Whichever exits first, stop the other (the EXIT trap).
wait -n

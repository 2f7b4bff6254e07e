"""Generating answers: the stream worker and its parts, each importing only the ones above it.

- `buffer`: the coalescing buffer of one answer (pure: no threads, no database, injected clock);
- (the stream kinds and the relay events built from a flush are chat/protocol.py's);
- `database`: which database errors pass by waiting, and the retry with backoff;
- `reading`: one answer's upstream events, applied to its job, and the outcome of the last one;
- `job`: one answer: claim, open, apply, finish, and its stop;
- `checkpoints`: the thread that saves the text so far of the answers that are due;
- `titles`: the title the model writes after the first answer of a conversation;
- `maintenance`: the heartbeat, the stops found on rows, unsaved ends and the reapers;
- `worker`: the pool (a ThreadPoolExecutor), the stop thread, and the jobs of this process.

The process's runtime (chat/runtime.py) builds the worker and hands it the relays and the local
model; nothing here reaches for process-wide state.
"""

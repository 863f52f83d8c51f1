"""The two tasks of the quality study, with their data, batching and scoring.

Both tasks are built so that an output step needs the part of the input that the SRformer schedule
aligns with it *and* information that sits in other segments (see docs/RESULTS.md for the design).

* ``lookup`` (synthetic): 32 chunks of 8 tokens; chunk ``t`` holds two item tokens, "M_t holds x_t"
  and "M_t owns y_t" (digits), and 6 blanks. The target is 32 steps ``M_t, x_t, M_r, y_r`` with
  ``r = π(t)``, π a random derangement: the digits are predicted, the markers are given (teacher-forced)
  and not scored. A step is right when both digits are. π is drawn for the decoder alone, so the
  encoder cannot know which chunk will be asked for; and since every chunk's y is asked exactly once,
  y_r never appears earlier in the decoder's own (teacher-forced) history either.
* ``recall`` (synthetic, multi-query associative recall): 32 chunks of 8 tokens; chunk j holds one
  (key, value) pair as one token "K_i is v_i" at a random offset, the rest filler; the chunks come in random order, so
  key K_i sits anywhere. The target lists every key in key order with its value, ``K_0 v_0 K_1 v_1 ...``
  (G = 64): keys are given (not scored), values are scored; generation feeds the given keys, as lookup
  feeds its markers.
* ``entities`` (real text, not run by default: its full model reaches only F1 0.29 and segmented
  equals full on it): the input is a 256-token window of a news article, interview transcript
  or paper; the target is its distinct named entities (runs of capitalised words that are not
  sentence-initial) in order of first mention, each closed by ``;``.
"""

from __future__ import annotations

import json
import random
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from srsum.errors import SrsumError

PAD, EOS, UNK, SEP = 0, 1, 2, 3
N_SPECIAL = 4
IGNORE = -100


@dataclass
class Batch:
    """One batch: encoder ids and mask, decoder inputs and labels (IGNORE where not scored)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    decoder_input_ids: torch.Tensor
    labels: torch.Tensor

    def to(self, device: str) -> "Batch":
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask,
                                               self.decoder_input_ids, self.labels)))


def collate(pairs: list[tuple[list[int], list[int]]], scored: list[list[bool]] | None = None) -> Batch:
    """Pad (source, target) pairs; decoder inputs are the target shifted right after PAD (the start token)."""
    n = max(len(src) for src, _ in pairs)
    m = max(len(tgt) for _, tgt in pairs)
    input_ids = torch.full((len(pairs), n), PAD, dtype=torch.long)
    decoder_input_ids = torch.full((len(pairs), m), PAD, dtype=torch.long)
    labels = torch.full((len(pairs), m), IGNORE, dtype=torch.long)
    for row, (src, tgt) in enumerate(pairs):
        input_ids[row, : len(src)] = torch.tensor(src)
        decoder_input_ids[row, 1 : len(tgt)] = torch.tensor(tgt[:-1])
        keep = scored[row] if scored is not None else [True] * len(tgt)
        labels[row, : len(tgt)] = torch.tensor([tok if k else IGNORE for tok, k in zip(tgt, keep)])
    return Batch(input_ids, (input_ids != PAD).long(), decoder_input_ids, labels)


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


# --------------------------------------------------------------------------------------------------
# Task (a): synthetic two-chunk lookup
# --------------------------------------------------------------------------------------------------


def derangement(n: int, rng: random.Random) -> list[int]:
    """A uniformly random permutation of range(n) with no fixed point (n >= 2)."""
    while True:
        perm = list(range(n))
        rng.shuffle(perm)
        if all(p != i for i, p in enumerate(perm)):
            return perm


def ramp(step: int, ramp_steps: int, low: int, high: int, rng: random.Random) -> int:
    """Pretraining curriculum: a random size from ``low`` up to a cap that grows linearly from ``low``
    to ``high`` over ``ramp_steps`` steps (then stays at ``high``). Without a ramp, always ``high``."""
    if ramp_steps <= 0:
        return high
    cap = low + round((high - low) * min(1.0, step / ramp_steps))
    return rng.randint(low, cap)


class ChunkTask:
    """What the synthetic chunk tasks share: fresh random training batches, fixed held-out examples.
    A subclass sets ``n_chunks`` and ``_eval`` and builds one (source, target, scored) in ``_example``."""

    n_chunks: int
    _eval: list

    def _example(self, rng: random.Random, chunks: int | None = None) -> tuple[list[int], list[int], list[bool]]:
        raise NotImplementedError

    def train_batches(self, seed: int, batch_size: int, ramp_steps: int = 0):
        """An endless stream of fresh random batches (no example is ever repeated). With ``ramp_steps``
        (pretraining only) batches start short and grow to all chunks, see :func:`ramp`."""
        rng = random.Random(seed)
        step = 0
        while True:
            chunks = ramp(step, ramp_steps, 2, self.n_chunks, rng)
            yield self._to_batch([self._example(rng, chunks) for _ in range(batch_size)])
            step += 1

    def eval_batches(self, batch_size: int, limit: int | None = None):
        examples = self._eval[:limit] if limit else self._eval
        for i in range(0, len(examples), batch_size):
            yield self._to_batch(examples[i : i + batch_size])

    @staticmethod
    def _to_batch(examples) -> Batch:
        return collate([(s, t) for s, t, _ in examples], [k for _, _, k in examples])


class LookupTask(ChunkTask):
    """Synthetic seq2seq task: every output step needs the aligned chunk and one chunk elsewhere."""

    name = "lookup"
    metric = "step accuracy"
    generative = False
    generation = "forced"  # srsum's decoder is fed the given markers and its own argmax digits
    pretrain_steps = 5000  # a CPU probe: step accuracy 0.30 after 1,600 steps, 0.75 after 3,000

    def __init__(self, n_chunks: int = 32, chunk_len: int = 8, eval_size: int = 256, shuffled: bool = False):
        if chunk_len < 1 or n_chunks < 2:
            raise SrsumError("lookup task: needs at least 2 chunks of at least 1 token")
        self.n_chunks, self.chunk_len, self.eval_size = n_chunks, chunk_len, eval_size
        # shuffled: the markers stand in a new random order in every example, so where M_r's chunk lies is known
        # only from the input's content, never from r (a trainable encoder cannot route "chunk r" by position)
        self.shuffled = shuffled
        if shuffled:
            self.name = "lookup_shuffled"
        self.digit0 = N_SPECIAL                   # the 10 digits, as the decoder writes them
        self.marker0 = self.digit0 + 10           # M_0 .. M_{n_chunks-1}, as the decoder reads them
        self.local0 = self.marker0 + n_chunks     # one input token per (marker, digit): "M_t holds x"
        self.remote0 = self.local0 + 10 * n_chunks  # and another kind: "M_t owns y"
        self.blank = self.remote0 + 10 * n_chunks   # the rest of every chunk
        self.vocab_size = self.blank + 1
        self.max_source_len = n_chunks * chunk_len
        self.max_target_len = 4 * n_chunks
        rng = random.Random(10_000)
        self._eval = [self._example(rng) for _ in range(eval_size)]

    def _example(self, rng: random.Random, chunks: int | None = None) -> tuple[list[int], list[int], list[bool]]:
        """One example of ``chunks`` chunks (all of them by default). A shorter example keeps the marker
        order but draws its markers from all ``n_chunks``, so every marker is trained."""
        if chunks is None or chunks >= self.n_chunks:
            markers = list(range(self.n_chunks))
        else:
            markers = sorted(rng.sample(range(self.n_chunks), chunks))
        if self.shuffled:
            rng.shuffle(markers)
        xs = [rng.randrange(10) for _ in markers]
        ys = [rng.randrange(10) for _ in markers]
        source: list[int] = []
        for marker, x, y in zip(markers, xs, ys):
            source += [self.local0 + 10 * marker + x, self.remote0 + 10 * marker + y]
            source += [self.blank] * (self.chunk_len - 2)
        target: list[int] = []
        for t, r in enumerate(derangement(len(markers), rng)):
            target += [self.marker0 + markers[t], self.digit0 + xs[t], self.marker0 + markers[r], self.digit0 + ys[r]]
        scored = [i % 2 == 1 for i in range(len(target))]
        return source, target, scored


    def step_scores(self, right: torch.Tensor, scored: torch.Tensor) -> dict:
        """From per-token hits of one batch: the local digit (x_t), the remote one (y_r), and whole steps."""
        hits = right[scored].view(right.shape[0], -1, 2)  # (batch, steps, [local, remote])
        return {"local": hits[..., 0].sum().item(), "remote": hits[..., 1].sum().item(),
                "steps": hits.all(-1).sum().item(), "count": hits.shape[0] * hits.shape[1]}

    def local_only_ceiling(self, seg_size: int) -> float:
        """Best step accuracy of a model that sees only the aligned segment: it can read x_t, and y_r
        only when chunk r shares the segment (probability p); otherwise it guesses one of 10 digits."""
        per_segment = max(1, seg_size // self.chunk_len)
        p = (min(per_segment, self.n_chunks) - 1) / (self.n_chunks - 1)
        return p + (1 - p) / 10

    def describe(self) -> dict:
        return {"name": self.name, "n": self.max_source_len, "G": self.max_target_len,
                "vocab_size": self.vocab_size, "eval_examples": len(self._eval), "metric": self.metric}


# --------------------------------------------------------------------------------------------------
# Task (c): multi-query associative recall
# --------------------------------------------------------------------------------------------------


class RecallTask(ChunkTask):
    """Synthetic seq2seq task: every value must be fetched by its key from wherever its chunk landed."""

    name = "recall"
    metric = "value accuracy"
    generative = False
    generation = "forced"  # srsum's decoder is fed the given keys and its own argmax values (keys are not
    # scored in training, so a model is never taught to write them: free generation scored 0.08 for full)
    # Key and value as two tokens ("K_i" then "v") did not learn on CPU probes (T5 0.127 after 2,000 steps,
    # BART at chance): binding a value to the key before it is hard for a 2-layer encoder. One token per
    # (key, value) pair, as lookup's items, makes it lookup's remote half: 5,000 steps as for lookup.
    pretrain_steps = 5000

    def __init__(self, n_chunks: int = 32, chunk_len: int = 8, n_values: int = 16, n_filler: int = 8,
                 eval_size: int = 256):
        if chunk_len < 2 or n_chunks < 2 or n_values < 2 or n_filler < 1:
            raise SrsumError("recall task: needs at least 2 chunks of at least 2 tokens and 2 values")
        self.n_chunks, self.chunk_len, self.n_values, self.n_filler = n_chunks, chunk_len, n_values, n_filler
        self.eval_size = eval_size
        self.key0 = N_SPECIAL                  # K_0 .. K_{n_chunks-1}, in the input and the target alike
        self.value0 = self.key0 + n_chunks     # the values
        self.filler0 = self.value0 + n_values  # the filler tokens
        self.pair0 = self.filler0 + n_filler   # one input token per (key, value): "K_i is v" (as lookup's items)
        self.vocab_size = self.pair0 + n_chunks * n_values
        self.max_source_len = n_chunks * chunk_len
        self.max_target_len = 2 * n_chunks
        rng = random.Random(40_000)
        self._eval = [self._example(rng) for _ in range(eval_size)]

    def _example(self, rng: random.Random, chunks: int | None = None) -> tuple[list[int], list[int], list[bool]]:
        """One example of ``chunks`` (key, value) chunks (all keys by default; fewer keys, drawn from all
        of them and listed in key order, for the pretraining curriculum)."""
        if chunks is None or chunks >= self.n_chunks:
            keys = list(range(self.n_chunks))
        else:
            keys = sorted(rng.sample(range(self.n_chunks), chunks))
        values = [rng.randrange(self.n_values) for _ in keys]
        order = list(range(len(keys)))
        rng.shuffle(order)
        source: list[int] = []
        for j in order:
            chunk = [self.filler0 + rng.randrange(self.n_filler) for _ in range(self.chunk_len)]
            chunk[rng.randrange(self.chunk_len)] = self.pair0 + keys[j] * self.n_values + values[j]
            source += chunk
        target: list[int] = []
        for key, value in zip(keys, values):
            target += [self.key0 + key, self.value0 + value]
        scored = [i % 2 == 1 for i in range(len(target))]
        return source, target, scored


    def local_only_ceiling(self, seg_size: int) -> float:
        """Best value accuracy of a model that sees only the aligned segment: value i is read only when
        K_i's chunk landed in the segment that value i's decoder position attends (probability
        chunks-per-segment / n_chunks, the chunks being shuffled); otherwise a guess, 1 in n_values."""
        per_segment = max(1, seg_size // self.chunk_len)
        p = min(per_segment, self.n_chunks) / self.n_chunks
        return p + (1 - p) / self.n_values

    def describe(self) -> dict:
        return {"name": self.name, "n": self.max_source_len, "G": self.max_target_len,
                "vocab_size": self.vocab_size, "values": self.n_values, "filler_tokens": self.n_filler,
                "eval_examples": len(self._eval), "metric": self.metric}


# --------------------------------------------------------------------------------------------------
# Task (b): distinct named entities of real articles, in order of first mention
# --------------------------------------------------------------------------------------------------

WORD_RE = re.compile(r"[^\W\d_]+|\d+|[^\w\s]|_")
SENTENCE_BREAKS = frozenset('.!?"(:\'“‘')
SOURCES = {
    "cnn_dailymail": ["cnn_dailymail/cnn_dailymail-test-sample.jsonl"],
    "xsum": ["xsum/xsum-test-sample.jsonl"],
    "arxiv": ["arxiv/arxiv-train-sample.jsonl", "arxiv/arxiv-validation-sample.jsonl",
              "arxiv/arxiv-test-sample.jsonl"],
    "mediasum": ["mediasum/mediasum-unknown-split-sample.jsonl"],
}


def words(text: str) -> list[str]:
    return WORD_RE.findall(text)


def is_capitalised(word: str) -> bool:
    return word[:1].isupper()


def entity_spans(tokens: list[str], max_len: int = 4) -> list[tuple[int, int]]:
    """(start, end) of each named entity: a maximal run of capitalised words, minus a sentence-initial
    first word, cut to ``max_len`` words. The lone pronoun "I" is not an entity."""
    spans, i = [], 0
    while i < len(tokens):
        if not is_capitalised(tokens[i]):
            i += 1
            continue
        j = i
        while j < len(tokens) and is_capitalised(tokens[j]):
            j += 1
        start = i + 1 if (i == 0 or tokens[i - 1] in SENTENCE_BREAKS) else i
        if start < j and tokens[start:j] != ["I"]:
            spans.append((start, min(j, start + max_len)))
        i = j
    return spans


class WordVocab:
    """Word-level ids for a model trained from scratch. Lower-case words, numbers and punctuation: the
    ``n_common`` most frequent of the training articles get their own ids, the rest hash (crc32, the same
    in every process) into ``n_rare`` buckets. Capitalised words are *anonymised* per example (Hermann
    et al. 2015 did the same to CNN/DailyMail entities): each distinct one gets a random id out of
    ``n_cap``, drawn afresh every time a training example is used, so a model can only list the
    entities by copying them, never by memorising them."""

    def __init__(self, train_texts: list[str], n_common: int = 700, n_cap: int = 64, n_rare: int = 256):
        counts = Counter(w for text in train_texts for w in words(text) if not is_capitalised(w))
        self.common = {w: N_SPECIAL + i for i, (w, _) in enumerate(counts.most_common(n_common))}
        self.cap0 = N_SPECIAL + len(self.common)
        self.rare0 = self.cap0 + n_cap
        self.n_cap, self.n_rare = n_cap, n_rare
        self.size = self.rare0 + n_rare

    def id(self, word: str) -> int:
        """The fixed id of a word that is not capitalised."""
        if word in self.common:
            return self.common[word]
        return self.rare0 + zlib.crc32(word.encode("utf-8")) % self.n_rare

    def anonymiser(self, tokens: list[str], rng: random.Random) -> dict[str, int]:
        """A random one-to-one map from the distinct capitalised words of ``tokens`` to cap ids."""
        caps = list(dict.fromkeys(w for w in tokens if is_capitalised(w)))
        picks = rng.sample(range(self.n_cap), min(len(caps), self.n_cap))
        picks += [rng.randrange(self.n_cap) for _ in range(len(caps) - len(picks))]
        return {w: self.cap0 + k for w, k in zip(caps, picks)}

    def encode(self, tokens: list[str], caps: dict[str, int]) -> list[int]:
        return [caps[w] if w in caps else self.id(w) for w in tokens]


def load_articles(data_dir: Path) -> list[dict]:
    """All articles of the four sources, de-duplicated by text, each tagged with its source."""
    articles, seen = [], set()
    for source, files in SOURCES.items():
        for rel in files:
            path = data_dir / rel
            if not path.is_file():
                raise SrsumError(f"entities task: missing data file {path} (set --data-dir)")
            for line in path.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                text = row["article"].strip()
                if text and text not in seen:
                    seen.add(text)
                    articles.append({"id": f"{source}/{row['id']}", "source": source, "text": text})
    return articles


def split_articles(articles: list[dict], eval_fraction: float) -> tuple[list[dict], list[dict]]:
    """Per source, the articles whose crc32(id) ranks lowest go to evaluation: a split by article."""
    train, held = [], []
    for source in SOURCES:
        rows = sorted((a for a in articles if a["source"] == source),
                      key=lambda a: zlib.crc32(a["id"].encode()))
        k = max(1, round(len(rows) * eval_fraction)) if rows else 0
        held += rows[:k]
        train += rows[k:]
    return train, held


class EntitiesTask:
    """Real-text task: list the distinct named entities of a window in order of first mention."""

    name = "entities"
    metric = "entity F1"
    generative = True
    pretrain_steps = 4000  # a CPU probe: entity F1 0.29 after 4,000 steps

    def __init__(self, data_dir: str | Path, window: int = 256, max_target_len: int = 64,
                 min_window: int = 64, eval_fraction: float = 0.15, eval_size: int = 256,
                 single_words: bool = True):
        self.single_words = single_words
        data_dir = Path(data_dir)
        train_articles, eval_articles = split_articles(load_articles(data_dir), eval_fraction)
        self.vocab = WordVocab([a["text"] for a in train_articles])
        self.vocab_size = self.vocab.size
        self.max_source_len, self.max_target_len, self.min_window = window, max_target_len, min_window
        self.train_ids = sorted(a["id"] for a in train_articles)
        self.eval_ids = sorted(a["id"] for a in eval_articles)
        self.train = [w for a in train_articles for w in self._windows(a)]
        held = [w for a in eval_articles for w in self._windows(a)]
        rng = random.Random(20_000)
        rng.shuffle(held)
        self._eval = [self._example(w, len(w["words"]), random.Random(30_000 + i)) for i, w in
                      enumerate(held[:eval_size])]
        if not self.train or not self._eval:
            raise SrsumError(f"entities task: no usable articles under {data_dir}")

    def _windows(self, article: dict) -> list[dict]:
        """Consecutive windows of ``window`` tokens (a shorter last one if it has ``min_window``)."""
        tokens = words(article["text"])
        out = []
        for start in range(0, len(tokens), self.max_source_len):
            chunk = tokens[start : start + self.max_source_len]
            if len(chunk) < self.min_window:
                break
            if entity_spans(chunk):
                out.append({"article": article["id"], "words": chunk})
        return out

    def _example(self, window: dict, length: int, rng: random.Random) -> dict:
        """The first ``length`` tokens of a window, anonymised with ``rng``, and their target."""
        tokens = window["words"][:length]
        caps = self.vocab.anonymiser(tokens, rng)
        entities = self.entities_of(tokens, caps)
        return {"article": window["article"], "source": self.vocab.encode(tokens, caps),
                "entities": entities, "target": self._target(entities)}

    def entities_of(self, tokens: list[str], caps: dict[str, int]) -> list[tuple[int, ...]]:
        """Distinct entities (as id tuples) in order of first mention."""
        seen: list[tuple[int, ...]] = []
        for start, end in entity_spans(tokens, max_len=1 if self.single_words else 4):
            ent = tuple(caps[w] for w in tokens[start:end])
            if ent not in seen:
                seen.append(ent)
        return seen

    def _target(self, entities: list[tuple[int, ...]]) -> list[int]:
        """Entities closed by SEP (none in single-word mode), cut to fit ``max_target_len`` with EOS."""
        target: list[int] = []
        sep = [] if self.single_words else [SEP]
        for ent in entities:
            if len(target) + len(ent) + len(sep) + 1 > self.max_target_len:
                break
            target += [*ent, *sep]
        return target + [EOS]

    def train_batches(self, seed: int, batch_size: int, ramp_steps: int = 0):
        """Shuffled epochs over the training windows, freshly anonymised each time, forever. With
        ``ramp_steps`` (pretraining only) each batch cuts its windows to one length that grows to the
        full window (:func:`ramp`)."""
        rng = random.Random(seed)
        order: list[int] = []
        step = 0
        while True:
            if len(order) < batch_size:
                more = list(range(len(self.train)))
                rng.shuffle(more)
                order += more
            picked, order = order[:batch_size], order[batch_size:]
            length = ramp(step, ramp_steps, 32, self.max_source_len, rng)
            examples = [self._example(self.train[i], length, rng) for i in picked]
            yield collate([(ex["source"], ex["target"]) for ex in examples])
            step += 1

    def eval_batches(self, batch_size: int, limit: int | None = None):
        examples = self._eval[:limit] if limit else self._eval
        for i in range(0, len(examples), batch_size):
            part = examples[i : i + batch_size]
            yield collate([(ex["source"], ex["target"]) for ex in part])

    def parse(self, ids: list[int]) -> list[tuple[int, ...]]:
        """The entities of a generated (or gold) target."""
        if self.single_words:
            return parse_entities([t for tok in ids for t in (tok, SEP)])
        return parse_entities(ids)

    def eval_examples(self, limit: int | None = None) -> list[dict]:
        return self._eval[:limit] if limit else self._eval

    def describe(self) -> dict:
        return {"name": self.name, "n": self.max_source_len, "G": self.max_target_len,
                "vocab_size": self.vocab_size, "train_windows": len(self.train),
                "train_articles": len(self.train_ids), "eval_articles": len(self.eval_ids),
                "eval_examples": len(self._eval), "metric": self.metric}


def parse_entities(ids: list[int]) -> list[tuple[int, ...]]:
    """Split generated ids at SEP (stopping at EOS) into entity tuples, keeping first mentions only."""
    out: list[tuple[int, ...]] = []
    current: list[int] = []
    for tok in ids:
        if tok == EOS:
            break
        if tok == SEP:
            if current and tuple(current) not in out:
                out.append(tuple(current))
            current = []
        elif tok != PAD:
            current.append(tok)
    if current and tuple(current) not in out:
        out.append(tuple(current))
    return out


def set_f1(predicted: list, gold: list) -> float:
    if not predicted and not gold:
        return 1.0
    hits = len(set(predicted) & set(gold))
    if hits == 0:
        return 0.0
    precision, recall = hits / len(set(predicted)), hits / len(set(gold))
    return 2 * precision * recall / (precision + recall)


def lcs_f1(predicted: list, gold: list) -> float:
    """ROUGE-L-style F1 over entity sequences: rewards the right order, not only the right set."""
    if not predicted or not gold:
        return float(predicted == gold)
    row = [0] * (len(gold) + 1)
    for p in predicted:
        prev = 0
        for j, g in enumerate(gold, 1):
            prev, row[j] = row[j], prev + 1 if p == g else max(row[j], row[j - 1])
    lcs = row[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(predicted), lcs / len(gold)
    return 2 * precision * recall / (precision + recall)


# --------------------------------------------------------------------------------------------------

TASK_NAMES = ("lookup", "lookup_shuffled", "recall", "entities")
DEFAULT_TASKS = ("lookup", "recall")


@lru_cache(maxsize=4)
def build_task(name: str, data_dir: str):
    """The task by name, cached per process (workers build each task once)."""
    if name == "lookup":
        return LookupTask()
    if name == "lookup_shuffled":
        return LookupTask(shuffled=True)
    if name == "recall":
        return RecallTask()
    if name == "entities":
        return EntitiesTask(data_dir)
    raise SrsumError(f"unknown task {name!r}: choose from {', '.join(TASK_NAMES)}")

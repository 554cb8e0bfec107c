"""The names both apps use on the wire: record keys, config entries, reply fields and statuses.

A Flower message is a ``RecordDict`` of named records. Every name a veilfed message or reply
uses is defined here once; ``docs/contracts.md`` ("Federated messages") lays them out per message
type and direction. The coordinator (``veilfed.coordinator``) and the client
(``veilfed.clients``) both import this module and never each other.

Invariants (changing any of them breaks every node already deployed):

- the meaning of an existing name never changes; a new field gets a new name, and a reader
  ignores names it does not know;
- every coordinator message carries the run settings (:data:`SETTINGS_KEY`) in its
  :data:`CONFIG_RECORD`, so a node needs no file of the coordinator's;
- every client reply carries a :data:`REPLY_KEY` record naming the client (:data:`CLIENT_ID`);
  a train reply also carries :data:`STATUS` (:data:`STATUS_TRAINED` or
  :data:`STATUS_DECLINED`); a declined reply carries :data:`REASON` and no numbers;
- an update's weight is :data:`WEIGHT_KEY` in its metric record: Flower's own
  ``num-examples``, so Flower's aggregation rules read it unchanged.
"""

from __future__ import annotations

# -- records of a message ------------------------------------------------------------------------
ARRAYS_RECORD = "arrays"  # ArrayRecord: a plaintext model (global model or a client's update)
CONFIG_RECORD = "config"  # ConfigRecord of every coordinator message
METRICS_RECORD = "metrics"  # MetricRecord of a train or evaluate reply
REPLY_KEY = "reply"  # ConfigRecord every client reply carries (client id, status, report)
UPDATE_RECORD = "he"  # HE train reply ConfigRecord: UPDATE_BYTES or WITHHELD
SHADOW_RECORD = "shadow"  # HE evaluate message ArrayRecord (test runs): plaintext FedAvg

# -- entries of the coordinator's CONFIG_RECORD --------------------------------------------------
SETTINGS_KEY = "settings"  # the run's RunSettings as JSON (veilfed.federation.settings)
ROUND_KEY = "server-round"  # the round a train or evaluate message belongs to (int)
GLOBAL_KEY = "he-global"  # bytes: the encrypted aggregate of the last round (HE, after round 1)
PROXIMAL_MU_KEY = "proximal-mu"  # FedProx's μ, set by Flower's FedProx on train messages

# -- entries of the REPLY_KEY record ------------------------------------------------------------
CLIENT_ID = "client-id"  # every reply: the client id the node answers as
STATUS = "status"  # train reply: STATUS_TRAINED or STATUS_DECLINED
REASON = "reason"  # declined reply: one line naming the client and why
REPORT = "report"  # trained reply: its privacy report (SignedReport JSON; unsigned if off)
STATUS_TRAINED = "trained"
STATUS_DECLINED = "declined"
# Set (True) in a declined reply when the client refused the global model it was sent (an HE
# aggregate below its contributor floor or failing its integrity check): not a budget matter, so
# the client stays eligible for later rounds.
REFUSED_MODEL = "refused-model"
# Query reply only: what the coordinator checks before the first round.
CLIPS = "clips"  # the client's shard size (train + held-out)
TRAIN_EXAMPLES = "train-examples"  # its training examples, the n its δ must stay below 1/n of
SIGNING_KEY = "signing-key"  # PEM of the Ed25519 key its privacy reports are signed with
HE_KEY_ID = "he-key-id"  # id of the HE keys it holds (HE runs)

# -- entries of the METRICS_RECORD --------------------------------------------------------------
WEIGHT_KEY = "num-examples"  # sample-weighted FedAvg (Flower's default key)
UNIT_WEIGHT_KEY = "unit-weight"  # central DP needs equal weights for its sensitivity bound
TRAIN_LOSS = "train/loss"  # a virtual client's mean training loss (real nodes never send it)
SHADOW_WEIGHT = "he/shadow-weight"  # HE train reply (test runs): the client's sample count
DECRYPT_MS = "he/decrypt_ms"  # HE evaluate reply: time the client took to decrypt
MAX_ABS_ERROR = "he/max_abs_error"  # HE evaluate reply (test runs): error vs plaintext FedAvg
EVAL_EXTRA = (DECRYPT_MS, MAX_ABS_ERROR)  # numbers an evaluate reply may add to eval metrics
# An evaluate reply's numbers per task and metric: the global model's on the held-out shard
# (``eval/<task>/<metric>``) and, beside it, the label-only baseline fitted on the client's
# training shard and scored on the same held-out clips (``baseline/<task>/<metric>``).
EVAL_PREFIX = "eval"
BASELINE_PREFIX = "baseline"
SCORE_PREFIXES = (EVAL_PREFIX, BASELINE_PREFIX)

# -- entries of the UPDATE_RECORD and SHADOW_RECORD ---------------------------------------------
UPDATE_BYTES = "update"  # bytes: the client's EncryptedUpdate
WITHHELD = "withheld"  # str: why the client withheld its update (its report still counts)
SHADOW_FLAT = "flat"  # the plaintext FedAvg, one flat float vector in the model's layout


def eval_metric(task: str, metric: str) -> str:
    """The metric-record name of one evaluation number: ``eval/<task>/<metric>``."""
    return f"{EVAL_PREFIX}/{task}/{metric}"


def baseline_metric(task: str, metric: str) -> str:
    """The metric-record name of one baseline number: ``baseline/<task>/<metric>``."""
    return f"{BASELINE_PREFIX}/{task}/{metric}"


# -- node config (Flower's --node-config): what a real node tells its ClientApp ----------------
# Written by ``veilfed node start``, read by the ClientApp; never sent to the coordinator.
NODE_CLIENT_ID = "client-id"  # the client id this node is
NODE_STORE = "store"  # the node store its shard bundle was imported into
NODE_KEY_FILE = "key-file"  # the client's Fernet key file, which opens NODE_STORE
NODE_STATE_DIR = "state-dir"  # the node's state (accountant, releases, signing key)
NODE_HE_CONTEXT = "he-context"  # the clients' secret HE context (HE runs)
NODE_SHARE_EVAL = "share-eval-metrics"  # true: metrics on held-out clips may leave the node
NODE_HE_FLOOR = "he-min-contributors"  # fewest contributors an aggregate must sum to decrypt
NODE_BUDGET = "epsilon-budget"  # the node's cap on ε over every run it joins
NODE_MAX_DELTA = "max-delta"  # the largest δ the node accepts
NODE_ACCOUNTANTS_KEY = "accountants"  # comma-separated accountants the node accepts
NODE_ALLOW_NO_DP = "allow-no-dp"  # true: the node joins runs without client-side DP
REAL_NODE_KEYS = (NODE_CLIENT_ID, NODE_STORE, NODE_KEY_FILE, NODE_STATE_DIR)  # all required
PARTITION_ID = "partition-id"  # Flower's simulation node config: the virtual client's index

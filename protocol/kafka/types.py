"""Kafka frames, per-connection state and the tables the parser needs (API names, the first
flexible version of each API, retriable error codes)."""
from __future__ import annotations

API_NAMES = (
    "Produce", "Fetch", "ListOffsets", "Metadata", "LeaderAndIsr", "StopReplica",
    "UpdateMetadata", "ControlledShutdown", "OffsetCommit", "OffsetFetch", "FindCoordinator",
    "JoinGroup", "Heartbeat", "LeaveGroup", "SyncGroup", "DescribeGroups", "ListGroups",
    "SaslHandshake", "ApiVersions", "CreateTopics", "DeleteTopics", "DeleteRecords",
    "InitProducerId", "OffsetForLeaderEpoch", "AddPartitionsToTxn", "AddOffsetsToTxn",
    "EndTxn", "WriteTxnMarkers", "TxnOffsetCommit", "DescribeAcls", "CreateAcls", "DeleteAcls",
    "DescribeConfigs", "AlterConfigs", "AlterReplicaLogDirs", "DescribeLogDirs",
    "SaslAuthenticate", "CreatePartitions", "CreateDelegationToken", "RenewDelegationToken",
    "ExpireDelegationToken", "DescribeDelegationToken", "DeleteGroups", "ElectLeaders",
    "IncrementalAlterConfigs", "AlterPartitionReassignments", "ListPartitionReassignments",
    "OffsetDelete", "DescribeClientQuotas", "AlterClientQuotas", "DescribeUserScramCredentials",
    "AlterUserScramCredentials", "Vote", "BeginQuorumEpoch", "EndQuorumEpoch", "DescribeQuorum",
    "AlterPartition", "UpdateFeatures", "Envelope", "FetchSnapshot", "DescribeCluster",
    "DescribeProducers", "BrokerRegistration", "BrokerHeartbeat", "UnregisterBroker",
    "DescribeTransactions", "ListTransactions", "AllocateProducerIds",
    "ConsumerGroupHeartbeat", "ConsumerGroupDescribe", "ControllerRegistration",
    "GetTelemetrySubscriptions", "PushTelemetry", "AssignReplicasToDirs",
    "ListClientMetricsResources", "DescribeTopicPartitions",
)
MAX_API_KEY = len(API_NAMES) - 1
MAX_API_VERSION = 20

# First version of each API whose request header is v2 / response header v1 (tagged
# fields); None: never flexible.  From the "flexibleVersions" of Kafka's message specs.
_FLEX = {0: 9, 1: 12, 2: 6, 3: 9, 4: 4, 5: 2, 6: 6, 7: 3, 8: 8, 9: 6, 10: 3, 11: 6, 12: 4,
         13: 4, 14: 4, 15: 5, 16: 3, 17: None, 18: 3, 19: 5, 20: 4, 21: 2, 22: 2, 23: 4,
         24: 3, 25: 3, 26: 3, 27: 1, 28: 3, 29: 2, 30: 2, 31: 2, 32: 4, 33: 2, 34: 2, 35: 2,
         36: 2, 37: 2, 38: 2, 39: 2, 40: 2, 41: 2, 42: 2, 43: 2, 44: 1, 47: None, 48: 1,
         49: 1, 53: 1, 54: 1}
FLEX_FROM = tuple(_FLEX.get(k, 0) for k in range(MAX_API_KEY + 1))

# Error codes a client retries (Kafka's RetriableException subclasses): the server's
# transient state, counted as server errors.  Every other non-zero code is the request's
# fault (client error), except UNKNOWN_SERVER_ERROR (-1), a server error.
RETRIABLE = frozenset((-1, 2, 3, 5, 6, 7, 9, 13, 14, 15, 16, 19, 20, 51, 56, 74, 75, 78, 80,
                       84, 89, 91, 98, 100))

ERROR_NAMES = {
    -1: "UNKNOWN_SERVER_ERROR", 1: "OFFSET_OUT_OF_RANGE", 2: "CORRUPT_MESSAGE",
    3: "UNKNOWN_TOPIC_OR_PARTITION", 4: "INVALID_FETCH_SIZE", 5: "LEADER_NOT_AVAILABLE",
    6: "NOT_LEADER_OR_FOLLOWER", 7: "REQUEST_TIMED_OUT", 8: "BROKER_NOT_AVAILABLE",
    9: "REPLICA_NOT_AVAILABLE", 10: "MESSAGE_TOO_LARGE", 12: "OFFSET_METADATA_TOO_LARGE",
    13: "NETWORK_EXCEPTION", 14: "COORDINATOR_LOAD_IN_PROGRESS",
    15: "COORDINATOR_NOT_AVAILABLE", 16: "NOT_COORDINATOR", 17: "INVALID_TOPIC_EXCEPTION",
    19: "NOT_ENOUGH_REPLICAS", 20: "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
    22: "ILLEGAL_GENERATION", 23: "INCONSISTENT_GROUP_PROTOCOL", 24: "INVALID_GROUP_ID",
    25: "UNKNOWN_MEMBER_ID", 26: "INVALID_SESSION_TIMEOUT", 27: "REBALANCE_IN_PROGRESS",
    29: "TOPIC_AUTHORIZATION_FAILED", 30: "GROUP_AUTHORIZATION_FAILED",
    31: "CLUSTER_AUTHORIZATION_FAILED", 33: "UNSUPPORTED_SASL_MECHANISM",
    35: "UNSUPPORTED_VERSION", 36: "TOPIC_ALREADY_EXISTS", 42: "INVALID_REQUEST",
    58: "SASL_AUTHENTICATION_FAILED", 69: "GROUP_ID_NOT_FOUND", 79: "MEMBER_ID_REQUIRED",
}


def error_name(code):
    return ERROR_NAMES.get(code) or "ERROR_%d" % code


class KafkaRequest:
    __slots__ = ("ts", "key", "version", "cid", "api", "path", "noreply")

    def __init__(self, ts, key, version, cid, api, path, noreply):
        self.ts = ts
        self.key = key
        self.version = version
        self.cid = cid          # correlation id
        self.api = api          # "Produce", "Fetch", ... ("ApiKey<n>" beyond the table)
        self.path = path        # the topic when the request names exactly one, else ""
        self.noreply = noreply  # Produce with acks=0: the broker sends no response

    def __repr__(self):
        return "KafkaRequest(%s v%d cid=%d)" % (self.api, self.version, self.cid)


class KafkaResponse:
    __slots__ = ("ts", "cid", "status", "err")

    def __init__(self, ts, cid, status, err):
        self.ts = ts
        self.cid = cid
        self.status = status    # "0" or the first error's name
        self.err = err

    def __repr__(self):
        return "KafkaResponse(cid=%d %s)" % (self.cid, self.status)


MAX_PENDING = 4096


class KafkaState:
    """Shared by both parsers: what each outstanding correlation id asked (api key and
    version), so that the response parser knows the response's layout."""

    __slots__ = ("pending",)

    def __init__(self):
        self.pending = {}         # correlation id -> (api key, version)

/* Records sent from the BPF programs to user space, and the values user space writes into
 * the BPF maps.  This file is the one definition of these layouts: bpf/layout.py parses the
 * structs below (fields of the types u8/u16/u32/s32/u64 and fixed arrays of them only, one
 * field per line, no padding holes: every field is naturally aligned by construction) and
 * builds the Python struct formats from them.  Keep that subset when editing.
 */
#ifndef L7_EVENTS_H
#define L7_EVENTS_H

#define EVT_OPEN  1   /* a connection's protocol was detected: roles, addresses */
#define EVT_DATA  2   /* bytes of one syscall (or one SSL call) on a detected connection */
#define EVT_CLOSE 3   /* a detected connection was closed: final counters */
#define EVT_EXEC  4   /* a process called exec (evt_hdr only): look for TLS libraries */
#define EVT_PARENT_SIGNAL 5  /* SIGINT/SIGTERM sent to config.watch_ppid (evt_hdr only) */

#define DIR_EGRESS  0
#define DIR_INGRESS 1

#define L4_UDP    0
#define L4_CLIENT 1
#define L4_SERVER 2

#define L7_UNKNOWN 0
#define L7_CLIENT  1
#define L7_SERVER  2

#define MSG_UNKNOWN  0
#define MSG_REQUEST  1
#define MSG_RESPONSE 2

/* how a data record's bytes were obtained */
#define SRC_SYSCALL 0
#define SRC_SSL     1   /* TLS plaintext from an OpenSSL / Go crypto/tls uprobe */

/* Common header of every record (16 bytes). */
struct evt_hdr {
    u32 type;        /* EVT_* */
    u32 tgid;
    u64 conn_id;     /* unique per connection for the probe's lifetime */
};

struct evt_open {
    u32 type;
    u32 tgid;
    u64 conn_id;
    u64 ts;          /* ns, CLOCK_MONOTONIC */
    s32 fd;
    u16 family;      /* AF_INET / AF_INET6, 0 if unknown */
    u16 server_port;
    u16 client_port;
    u8 l4_role;      /* L4_* */
    u8 l7_role;      /* L7_* */
    u8 proto;        /* PROTO_* (protocol/registry.py) */
    u8 ssl;
    u8 pad[2];
    u8 client_ip[16];/* IPv4 in the first 4 bytes when family == AF_INET */
    u8 server_ip[16];
};

struct evt_data {
    u32 type;
    u32 tgid;
    u64 conn_id;
    u64 ts;          /* ns at syscall exit */
    u32 true_len;    /* bytes that crossed the socket */
    u32 cap_len;     /* bytes of them that follow this header */
    u32 lost;        /* bytes of this direction that crossed the socket before this record
                        without being delivered (sendfile, ring full): a gap to skip */
    u8 direction;    /* DIR_* */
    u8 source;       /* SRC_* */
    u8 proto;
    u8 l7_role;
    u32 lost_msgs;   /* responses of this direction that were not delivered although their
                        request was (ring full): the kernel counted them in `kacct`; user
                        space retires that many of its oldest unanswered requests */
    u32 flags;       /* EVF_* */
};

#define EVF_CLEAN_GAP 1  /* the `lost` bytes before this record are whole messages the kernel
                            counted itself (sampled out), and this record starts a message */
/* MySQL and PostgreSQL answer in turns: a response turn is the server->client bytes between
 * two client->server syscalls.  The kernel delivers the first DB_TURN_HEAD bytes of a turn
 * (what the parsers need: OK / ERR / column count / the first messages) and skips the rest
 * (result rows) by length. */
#define EVF_TURN      2  /* this record starts a response turn; if the previous turn was cut
                            (EVF_TURN_CUT), the `lost` bytes before it are that turn's
                            uncaptured rest, not a loss */
#define EVF_TURN_CUT  4  /* the bytes of this response turn after this record's captured ones
                            (the rest of true_len, and later syscalls up to the next EVF_TURN
                            record) are not delivered */
#define DB_TURN_HEAD  1024  /* bytes delivered of a MySQL / PostgreSQL response turn */

struct evt_close {
    u32 type;
    u32 tgid;
    u64 conn_id;
    u64 ts;
    u64 bytes_sent;
    u64 bytes_recv;
    u64 segs_sent;
    u64 segs_recv;
    u32 acct;        /* 1: the connection has an entry in map `kacct` */
    u32 pad;
};

/* Map `conns`: key (tgid, fd) -> per-connection state kept in the kernel. */
struct conn_key {
    u32 tgid;
    s32 fd;
};

struct conn_val {
    u64 conn_id;
    u64 bytes_sent;  /* cumulative since the connection was first seen */
    u64 bytes_recv;
    u64 segs_sent;   /* number of send / recv syscalls (or SSL calls) with data */
    u64 segs_recv;
    u64 sk;          /* struct sock * (an opaque key, never dereferenced) */
    u32 lost_sent;   /* bytes not delivered to user space (sendfile, ring full) */
    u32 lost_recv;
    u16 family;
    u16 server_port;
    u16 client_port;
    u8 l4_role;
    u8 l7_role;
    u8 proto;
    u8 ssl;          /* 1: data comes from TLS uprobes, syscall bytes are ciphertext */
    u8 tries;        /* detection attempts so far */
    u8 flags;        /* CONN_F_* */
    u8 flags2;       /* CONN_F2_* (flags has no bit left) */
    u8 pad[3];
    u8 client_ip[16];
    u8 server_ip[16];
    /* in-kernel pairing of HTTP/1.x messages (see http_bytes in bpf/probe.c): requests
       awaiting their response, oldest at fifo_head (indexes mod FIFO_LEN) */
    u64 fifo_ts[4];  /* the request's start, ns */
    u64 fifo_api[4]; /* its http_api_hash() (include/l7.h) */
    u8 fifo_dlv[4];  /* 1: the request was delivered to user space */
    u8 fifo_head;
    u8 fifo_tail;
    u8 shed;         /* SHED_* bits: the current message of a direction is not delivered */
    u8 hard_gap;     /* SHED_* bits: a direction lost bytes the kernel could not account */
    u32 lost_msgs;   /* see evt_data.lost_msgs */
    u32 turn_seen;   /* MySQL / PostgreSQL: bytes of the current response turn seen so far,
                        at most DB_TURN_HEAD (0: the next response bytes start a turn; see
                        db_capture in bpf/probe.c) */
};

#define FIFO_LEN 4
#define SHED_REQ  1
#define SHED_RESP 2

/* Map `kacct`: conn_id -> what the kernel counted itself of a connection's requests and
 * responses: those of sampled-out transactions and of records the ring buffer could not take.
 * Cumulative; user space reads the deltas every period.  Each request and response is
 * counted exactly once: here when its first syscall was not delivered, else by the parsers.
 * The latency of a pair is counted here when either side was not delivered. */
struct conn_acct {
    u32 req;
    u32 resp;
    u32 err_client;  /* 4xx */
    u32 err_server;  /* 5xx */
    u32 lat_n;
    u32 sampled_out; /* requests not delivered by the sampler's choice (not for lack of room) */
    u64 lat_sum;     /* ns */
    u64 lat_max;
    u32 bucket[8];   /* gala-gopher's 7 latency buckets (pipeline/aggregate.py BOUNDS), then
                        latencies above the last bound */
    u32 refused;     /* data records of the connection the ring buffer refused (any protocol;
                        kacct only): l7_link msgs_dropped */
    u32 pad;
};

/* An HTTP API name (l7_rpc_api key "METHOD path") is at most this long (upstream's rule) */
#define HTTP_API_LEN 63

/* Map `kapi`: (conn_id, API hash) -> conn_acct, the same counts per API for l7_rpc_api. */
struct api_key {
    u64 conn_id;
    u64 api;
};

/* Map `stats`: per-CPU counters user space reports, by index */
#define STAT_RECORDS_DROPPED 0   /* records the ring buffer could not take */
#define STAT_BYTES_DROPPED   1   /* their bytes */
#define STAT_CONNS_DROPPED   2   /* connections not tracked: map `conns` full */
#define STAT_TLS_NO_SOCKET   3   /* TLS calls on a socket not seen yet, not parsed */
#define STAT_SAMPLED_OUT     4   /* HTTP transactions counted in the kernel by the sampler */
#define STAT_TAIL_FAILED     5   /* data not handled: the tail call to the data program failed */
#define NSTATS               6

/* Map `sampler`, per CPU: the credit (ns) of the token bucket that decides which HTTP
 * transactions are delivered when probe_config.sample_cost_ns is set */
struct sampler_state {
    u64 credit;
    u64 last;
};

#define CONN_F_ADDR     1   /* addresses known */
#define CONN_F_SEEDED   2   /* created by user space for a pre-existing connection */
#define CONN_F_IGNORED  4   /* detection gave up, or protocol not enabled */
#define CONN_F_ACCT     8   /* the connection has an entry in map `kacct` */
#define CONN_F_UNANNOUNCED 16  /* protocol known, EVT_OPEN not delivered yet (ring full) */
#define CONN_F_PIPELINED 0x20  /* HTTP: requests were pipelined in one syscall: never sampled */
#define CONN_F_MISSED_EGRESS  0x40  /* data of this direction failed detection (l7.h) */
#define CONN_F_MISSED_INGRESS 0x80
/* conn_val.flags2 (set by the kernel only: user space never writes a conn_val it did not
 * create, the kernel updates those in place) */
#define CONN_F2_SHED_OK 1   /* HTTP: map `shed_ok` held this connection: the sampler may shed
                               its transactions */

/* Map `shed_ok`: conn_id -> 1, written by user space (pipeline/conntrack.py, SHED_OK_AFTER)
 * once the connection's requests came one per syscall; until then the kernel delivers a
 * transaction the sampler would shed.  The kernel deletes the entry when it sets
 * CONN_F2_SHED_OK; conn_ids are never reused, so an entry left by a connection that closed
 * first is only a stale LRU entry. */

/* Map `config`, index 0. */
struct probe_config {
    u32 proto_flags;     /* FLAG_* bits of the protocols to detect */
    u32 filter_pids;     /* 0: all, 1: only tgids in map `pids`, 2: all but those */
    u32 emit_data;       /* 1: send data records (rpc/trace tables wanted) */
    u32 cap_bytes;       /* bytes captured per syscall, <= CAP_MAX */
    u32 tls;             /* 1: TLS uprobes are attached */
    u32 watch_ppid;      /* != 0: report SIGINT/SIGTERM sent to this pid (our parent) */
    u32 sample_cost_ns;  /* != 0: deliver an HTTP transaction for every this many ns of
                            credit per CPU (1e9 * ncpus / rate); the rest are counted in the
                            kernel (kacct) */
    u32 sample_burst_ns; /* the most credit a CPU can save up */
};

#endif

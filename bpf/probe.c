/* l7probe kernel side: socket tracepoints (default) or syscall tracepoints, no kprobes.
 *
 * Default (SOCK_HOOKS, see sock_io): sock:sock_send_length / sock_recv_length fire inside
 * each socket send / receive, after the data moved; the syscall's arguments come from the
 * thread's user registers.  There: count bytes and segments in the connection (kernel-side
 * l7_link counters), detect the protocol on the first data, and send a bounded prefix of the
 * bytes plus their true length to user space.  A socket becomes a connection at its first
 * data (role and addresses from sock:inet_sock_set_state, keyed by `sk`; connections that
 * existed before the probe started are entered by user space); tcp:tcp_destroy_sock ends it.
 *
 * Otherwise (kernels without them, or L7PROBE_HOOKS=syscalls|raw), one send/recv syscall:
 *   sys_enter_<op>      remember (fd, buffer) of this thread's syscall, if (tgid, fd) is a
 *                       tracked connection
 *   sock:sock_*_length  the syscall really touched a socket: remember its `sk`
 *   sys_exit_<op>       as above.
 * Connections enter map `conns` at connect()/accept() exit (or from user space, or at the
 * first data of a process forked since on a TCP socket it inherited, see adopt_conn).
 * close() sends the final counters.
 *
 * Macros set by bpf/loader.py: CAP_MAX (power of two), RINGBUF (1: ring buffer, 0: perf),
 * PROTO_* / FLAG_* (protocol/registry.py), HAVE_SOCK_LEN_TP (1: sock_*_length exist),
 * SOCK_HOOKS / RAW_SYSCALLS (the hooks).
 */
#include <uapi/linux/ptrace.h>
#include <linux/socket.h>
#include <linux/uio.h>

#include "l7_events.h"
#include "l7.h"

#define EINPROGRESS 115
#define MAX_IOV 8
#define AF_INET_ 2
#define AF_INET6_ 10
#define IPPROTO_UDP_ 17

struct data_evt_buf {
    struct evt_data hdr;
    u8 data[CAP_MAX * 2];     /* twice CAP_MAX so the verifier accepts off + len */
};

/* What one thread's pending syscall is about. */
struct active_op {
    u64 buf;          /* user buffer, or iovec array */
    u64 sk;           /* set by sock_*_length */
    s32 fd;
    u32 iovcnt;       /* 0: plain buffer */
    u8 dir;           /* DIR_* */
    u8 sock_seen;
    u8 is_accept;
    u8 is_connect;
    u8 adopt;         /* fd not tracked yet, in a forked process: adopt it if a TCP socket */
    u8 l4proto;       /* IPPROTO_* of the socket, from sock_*_length (17: UDP, see udp.h) */
    u8 pad[2];
    u64 name;         /* datagram syscalls: user sockaddr (peer), or 0 */
    u64 msgs;         /* sendmmsg/recvmmsg: the struct mmsghdr array (buf unused), or 0 */
    s64 ret;          /* the syscall's result, for udp.h's tail-called program */
};

struct sk_addr {
    u16 family;
    u16 sport;
    u16 dport;
    u16 l4_role;      /* L4_SERVER: passive open (accepted), L4_CLIENT: active, 0: unknown */
    u8 saddr[16];
    u8 daddr[16];
};

BPF_HASH(conns, struct conn_key, struct conn_val, 65536);
/* LRU: an entry whose thread died inside the syscall must not stay forever */
BPF_TABLE("lru_hash", u64, struct active_op, active, 16384);
BPF_TABLE("lru_hash", u64, struct sk_addr, sk_addrs, 65536);
/* Processes (not threads) created while the probe runs, until they exec.  They may use
 * sockets they inherited, which no connect()/accept() of theirs announced: PostgreSQL's
 * postmaster accepts a connection and forks the backend that serves it. */
BPF_TABLE("lru_hash", u32, u8, forked, 16384);
BPF_ARRAY(config, struct probe_config, 1);
BPF_HASH(pids, u32, u8, 16384);
/* per-CPU scratch as a plain array indexed by CPU: per-CPU maps cap values at 32 KiB */
BPF_ARRAY(scratch, struct data_evt_buf, NR_CPUS_MAX);
BPF_PERCPU_ARRAY(seq, u64, 1);
/* counters user space reports, indexed by STAT_* (l7_events.h) */
BPF_PERCPU_ARRAY(stats, u64, NSTATS);
/* what the kernel counted itself of a connection's requests (struct conn_acct); LRU so that
   entries of connections user space never reads cannot fill it */
BPF_TABLE("lru_hash", u64, struct conn_acct, kacct, 65536);
BPF_PERCPU_ARRAY(sampler, struct sampler_state, 1);
/* the same per (connection, API) for l7_rpc_api: the API is http_api_hash() of the request */
BPF_TABLE("lru_hash", struct api_key, struct conn_acct, kapi, 65536);
/* API hashes whose name user space knows (1: it writes them) or was sent the first request
   of (2: http_bytes): a request of another API is delivered whatever the sampler says, so
   that every API gets its name */
BPF_TABLE("lru_hash", u64, u8, apis_known, 65536);
/* connections whose transactions the sampler may shed (include/l7_events.h, CONN_F2_SHED_OK):
   user space writes them once it saw their requests come one per syscall */
BPF_TABLE("lru_hash", u64, u8, shed_ok, 16384);
/* one all-zero conn_acct, the initial value of new kacct/kapi entries (not on the stack:
   the uprobe programs that reach here are near the 512-byte stack limit) */
BPF_ARRAY(acct_zero, struct conn_acct, 1);
BPF_PERCPU_ARRAY(open_buf, struct evt_open, 1);
/* handle_bytes -> data_body (a tail call): what the data is, and the programs by type */
struct pending_data {
    struct conn_key k;
    struct active_op op;
    u32 len;
    u8 dir;
    u8 source;
    u8 gather;        /* GATHER_*: the iovec walk of gather_body */
    u8 g_calls;       /* gather_body runs so far */
    u32 g_idx;        /* the next iovec to gather */
    u32 g_off;        /* bytes gathered so far (in gather_buf) */
    u32 g_want;       /* bytes to gather: the record's captured prefix */
    u32 pad;
};
BPF_PERCPU_ARRAY(pending, struct pending_data, 1);
/* one program array per caller type (the kernel wants one program type per array): the
   syscall hooks' (tracepoint or raw tracepoint) and the TLS uprobes'.  [0]: the data
   program, [1] (syscalls only): gather_body */
BPF_PROG_ARRAY(data_tail_sys, 2);
BPF_PROG_ARRAY(data_tail_up, 1);
/* Syscalls with more iovecs than copy_data walks (gRPC's C core writes dozens per sendmsg):
 * gather_body copies them into gather_buf, GATHER_IOV per run, tail-calling itself for up
 * to GATHER_CALLS runs, then tail-calls the data program again, whose send_data sends
 * gather_buf: still one record per syscall.  Tail calls in all, at most: handle_bytes's,
 * the data program's, GATHER_CALLS - 1 of gather_body's own, its call back: 31 (the kernel
 * allows 32, 33 since Linux 5.17). */
#define GATHER_NONE 0
#define GATHER_RUNNING 1
#define GATHER_DONE 2
#define GATHER_FAILED 3
#define GATHER_IOV 36        /* GATHER_IOV * GATHER_CALLS >= 1024, UIO_MAXIOV: every iovec */
#define GATHER_CALLS 29
BPF_ARRAY(gather_buf, struct data_evt_buf, NR_CPUS_MAX);
#if HAVE_SOCK_LEN_TP
BPF_PROG_ARRAY(udp_tail, 1);    /* [0]: udp_exit_tail (udp.h), set by bpf/loader.py */
#endif
/* short first reads awaiting the next read, for detection (see detect_joined) */
#define SHORT_MAX 16
struct short_read {
    u32 len;
    u8 data[SHORT_MAX];
};
BPF_TABLE("lru_hash", struct conn_key, struct short_read, short_reads, 4096);

#if RINGBUF
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
#else
BPF_PERF_OUTPUT(events);
#endif

/* Send a record; data records go without a wake-up (user space polls on a timer). */
static __always_inline int output(void *ctx, void *ptr, u32 size, int wakeup) {
#if RINGBUF
    return events.ringbuf_output(ptr, size, wakeup ? 0 : BPF_RB_NO_WAKEUP);
#else
    return events.perf_submit(ctx, ptr, size);
#endif
}

/* Clamp x to [0, CAP_MAX] in a way the verifier can follow after compiler optimisations. */
#define CLAMP_CAP(x) do {                     \
        asm volatile("" : "+r"(x));           \
        (x) &= (CAP_MAX * 2 - 1);             \
        if ((x) > CAP_MAX)                    \
            (x) = CAP_MAX;                    \
    } while (0)

static __always_inline void stat_add(int idx, u64 n) {
    u64 *v = stats.lookup(&idx);
    if (v)
        *v += n;
}

/* Bytes and segments of one socket operation (or TLS call) on a connection. */
static __always_inline void count_io(struct conn_val *c, u8 dir, u32 len) {
    if (dir == DIR_EGRESS) {
        c->bytes_sent += len;
        c->segs_sent += 1;
    } else {
        c->bytes_recv += len;
        c->segs_recv += 1;
    }
}

/* A tail call that failed (arrays not filled yet, or emptied at stop): the bytes are a gap
 * for user space, counted (STAT_TAIL_FAILED), never a silent loss. */
/* `len` bytes of direction `dir` that user space gets no record of: the next record of
 * that direction carries them in `lost` */
static __always_inline void add_lost(struct conn_val *c, u8 dir, u32 len) {
    if (dir == DIR_EGRESS)
        c->lost_sent += len;
    else
        c->lost_recv += len;
}

static __always_inline void data_gap(struct conn_val *c, u8 dir, u32 len) {
    stat_add(STAT_TAIL_FAILED, 1);
    add_lost(c, dir, len);
}

static __always_inline struct probe_config *get_config(void) {
    int zero = 0;
    return config.lookup(&zero);
}

static __always_inline int pid_wanted(u32 tgid, struct probe_config *cfg) {
    if (!cfg->filter_pids)
        return 1;
    if (cfg->filter_pids == 1)                  /* whitelist */
        return pids.lookup(&tgid) != NULL;
    return pids.lookup(&tgid) == NULL;          /* 2: blacklist */
}

static __always_inline u64 new_conn_id(void) {
    int zero = 0;
    u64 *s = seq.lookup(&zero);
    u64 n = 0;
    if (s) {
        *s += 1;
        n = *s;
    }
    return ((u64)bpf_get_smp_processor_id() << 48) | (n & 0xffffffffffffULL);
}

/* ---------------------------------------------------------------- addresses ---------- */

TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (args->protocol != 6)   /* IPPROTO_TCP */
        return 0;
    u64 sk = (u64)args->skaddr;
    if (args->newstate == 1) {          /* TCP_ESTABLISHED */
        struct sk_addr a = {};
        a.family = args->family;
        a.sport = args->sport;
        a.dport = args->dport;
        a.l4_role = args->oldstate == 3 ? L4_SERVER :       /* TCP_SYN_RECV */
                    args->oldstate == 2 ? L4_CLIENT : 0;    /* TCP_SYN_SENT */
        if (args->family == AF_INET_) {
            __builtin_memcpy(a.saddr, args->saddr, 4);
            __builtin_memcpy(a.daddr, args->daddr, 4);
        } else {
            __builtin_memcpy(a.saddr, args->saddr_v6, 16);
            __builtin_memcpy(a.daddr, args->daddr_v6, 16);
        }
        sk_addrs.update(&sk, &a);
    } else if (args->newstate == 7) {   /* TCP_CLOSE */
        sk_addrs.delete(&sk);
    }
    return 0;
}

/* Fill a connection's addresses from its sk, once. */
static __always_inline void conn_fill_addr(struct conn_val *c, u64 sk) {
    if (c->flags & CONN_F_ADDR || sk == 0)
        return;
    c->sk = sk;
    struct sk_addr *a = sk_addrs.lookup(&sk);
    if (!a)
        return;
    c->family = a->family;
    if (c->l4_role == L4_SERVER) {
        c->server_port = a->sport;
        c->client_port = a->dport;
        __builtin_memcpy(c->server_ip, a->saddr, 16);
        __builtin_memcpy(c->client_ip, a->daddr, 16);
    } else {
        c->server_port = a->dport;
        c->client_port = a->sport;
        __builtin_memcpy(c->server_ip, a->daddr, 16);
        __builtin_memcpy(c->client_ip, a->saddr, 16);
    }
    c->flags |= CONN_F_ADDR;
}

/* Tell user space about a connection whose protocol is known (EVT_OPEN).  Until that
 * record is delivered the connection is CONN_F_UNANNOUNCED: its bytes are not sent (user
 * space could not place them) and its HTTP messages are counted in the kernel; every later
 * syscall tries again.  Returns 1 once announced. */
static __always_inline int announce(void *ctx, struct conn_val *c, struct conn_key *k) {
    int zero = 0;
    struct evt_open *o = open_buf.lookup(&zero);    /* not on the stack: see acct_zero */
    if (!o)
        return 0;
    o->type = EVT_OPEN;
    o->tgid = k->tgid;
    o->conn_id = c->conn_id;
    o->ts = bpf_ktime_get_ns();
    o->fd = k->fd;
    o->family = c->family;
    o->server_port = c->server_port;
    o->client_port = c->client_port;
    o->l4_role = c->l4_role;
    o->l7_role = c->l7_role;
    o->proto = c->proto;
    o->ssl = c->ssl;
    __builtin_memcpy(o->client_ip, c->client_ip, 16);
    __builtin_memcpy(o->server_ip, c->server_ip, 16);
    if (output(ctx, o, sizeof(*o), 0) != 0) {
        stat_add(STAT_RECORDS_DROPPED, 1);
        c->flags |= CONN_F_UNANNOUNCED;
        return 0;
    }
    c->flags &= ~CONN_F_UNANNOUNCED;
    return 1;
}

/* ---------------------------------------------------------------- connect / accept --- */

static __always_inline int enter_conn_op(int fd, int is_accept, int is_connect,
                                         const struct sockaddr *uaddr) {
    u64 id = bpf_get_current_pid_tgid();
    struct probe_config *cfg = get_config();
    if (!cfg || !pid_wanted(id >> 32, cfg))
        return 0;
    if (uaddr) {
        u16 family = 0;
        bpf_probe_read_user(&family, sizeof(family), uaddr);
        if (is_connect && family != AF_INET_ && family != AF_INET6_)
            return 0;
    }
    struct active_op op = {};
    op.fd = fd;
    op.is_accept = is_accept;
    op.is_connect = is_connect;
    op.name = (u64)uaddr;
    active.update(&id, &op);
    return 0;
}

#if HAVE_SOCK_LEN_TP
/* connect(): the peer address, which is a UDP socket's only one (TCP connections get theirs
 * from sock:inet_sock_set_state, which overrides these, CONN_F_ADDR not being set). */
static __always_inline void udp_connect_addr(struct conn_val *c, u64 uaddr) {
    u8 sa[24] = {};
    if (!uaddr || bpf_probe_read_user(sa, sizeof(sa), (void *)uaddr) != 0)
        return;
    u16 family = sa[0] | (sa[1] << 8);
    c->family = family;
    c->server_port = (sa[2] << 8) | sa[3];
    if (family == AF_INET_)
        __builtin_memcpy(c->server_ip, sa + 4, 4);
    else if (family == AF_INET6_)
        __builtin_memcpy(c->server_ip, sa + 8, 16);
}
#endif

static __always_inline int exit_conn_op(long ret) {
    u64 id = bpf_get_current_pid_tgid();
    struct active_op *op = active.lookup(&id);
    if (!op)
        return 0;
    struct conn_key k = {.tgid = id >> 32};
    struct conn_val c = {};
    if (op->is_connect) {
        if (ret < 0 && ret != -EINPROGRESS)
            goto out;
        k.fd = op->fd;
        c.l4_role = L4_CLIENT;
    } else {
        if (ret < 0)
            goto out;
        k.fd = ret;
        c.l4_role = L4_SERVER;
    }
    c.conn_id = new_conn_id();
#if HAVE_SOCK_LEN_TP
    if (op->is_connect)
        udp_connect_addr(&c, op->name);     /* udp.h: a UDP socket's only peer address */
#endif
    if (conns.update(&k, &c) != 0)
        stat_add(STAT_CONNS_DROPPED, 1);
out:
    active.delete(&id);
    return 0;
}

#if !RAW_SYSCALLS && !SOCK_HOOKS
TRACEPOINT_PROBE(syscalls, sys_enter_connect) {
    return enter_conn_op(args->fd, 0, 1, (const struct sockaddr *)args->uservaddr);
}
TRACEPOINT_PROBE(syscalls, sys_exit_connect) { return exit_conn_op(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_accept) { return enter_conn_op(args->fd, 1, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_accept) { return exit_conn_op(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_accept4) { return enter_conn_op(args->fd, 1, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_accept4) { return exit_conn_op(args->ret); }
#endif

/* ---------------------------------------------------------------- fork / exec -------- */

#if HAVE_SOCK_LEN_TP
#define CLONE_THREAD_ 0x00010000
TRACEPOINT_PROBE(task, task_newtask) {
    if (args->clone_flags & CLONE_THREAD_)
        return 0;
    u32 pid = args->pid;        /* the new process: its pid is its tgid */
    u8 one = 1;
    forked.update(&pid, &one);
    return 0;
}
#endif

TRACEPOINT_PROBE(sched, sched_process_exec) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    forked.delete(&tgid);       /* a new program makes its own connections */
#if TLS
    /* New programs may link TLS libraries: tell user space, which looks for uprobe
       targets. */
    struct probe_config *cfg = get_config();
    if (!cfg || !cfg->tls || !pid_wanted(tgid, cfg))
        return 0;
    struct evt_hdr e = {.type = EVT_EXEC, .tgid = tgid};
    output(args, &e, sizeof(e), 0);
#endif
    return 0;
}

#if HAVE_SIGNAL_TP
/* gala-gopher stops an extend probe with SIGINT to the first pid `pgrep` lists, which is the
 * `sh -c` wrapper when /bin/sh is dash (it does not exec).  dash holds that SIGINT until
 * its child exits, so the probe is told here: a SIGINT or SIGTERM generated for the parent
 * user space named.  Signals are rare: this costs nothing measurable. */
TRACEPOINT_PROBE(signal, signal_generate) {
    struct probe_config *cfg = get_config();
    if (!cfg || cfg->watch_ppid == 0 || (u32)args->pid != cfg->watch_ppid)
        return 0;
    if (args->sig != 2 && args->sig != 15)
        return 0;
    struct evt_hdr e = {.type = EVT_PARENT_SIGNAL, .tgid = args->pid};
    output(args, &e, sizeof(e), 0);
    return 0;
}
#endif

/* ---------------------------------------------------------------- close -------------- */

/* A connection's end: its final counters to user space, its map entries deleted. */
static __always_inline void close_conn(void *ctx, struct conn_key *kp, struct conn_val *c) {
    struct conn_key k = *kp;
    if (c->proto && (c->flags & CONN_F_UNANNOUNCED) && (c->flags & CONN_F_ACCT))
        announce(ctx, c, &k);       /* so that user space can place the kernel's counts */
    if (c->proto && !(c->flags & CONN_F_UNANNOUNCED)) {
        struct evt_close e = {};
        e.type = EVT_CLOSE;
        e.tgid = k.tgid;
        e.conn_id = c->conn_id;
        e.ts = bpf_ktime_get_ns();
        e.bytes_sent = c->bytes_sent;
        e.bytes_recv = c->bytes_recv;
        e.segs_sent = c->segs_sent;
        e.segs_recv = c->segs_recv;
        e.acct = (c->flags & CONN_F_ACCT) != 0;
        if (output(ctx, &e, sizeof(e), 0) != 0)
            stat_add(STAT_RECORDS_DROPPED, 1);
    }
    short_reads.delete(&k);
    conns.delete(&k);
}

static __always_inline int do_close(void *ctx, int fd) {
    u64 id = bpf_get_current_pid_tgid();
    struct conn_key k = {.tgid = id >> 32, .fd = fd};
    struct conn_val *c = conns.lookup(&k);
    if (c)
        close_conn(ctx, &k, c);
    return 0;
}

#if !RAW_SYSCALLS && !SOCK_HOOKS
TRACEPOINT_PROBE(syscalls, sys_enter_close) { return do_close(args, args->fd); }
#endif

/* ---------------------------------------------------------------- data --------------- */

static __always_inline int enter_data(int fd, u64 buf, u32 iovcnt, u8 dir) {
    u64 id = bpf_get_current_pid_tgid();
    struct conn_key k = {.tgid = id >> 32, .fd = fd};
    struct conn_val *c = conns.lookup(&k);
    u8 adopt = 0;
    if (!c) {
#if HAVE_SOCK_LEN_TP
        if (!forked.lookup(&k.tgid))
            return 0;
        adopt = 1;              /* see adopt_conn() at syscall exit */
#else
        return 0;
#endif
    } else if (c->flags & CONN_F_IGNORED) {
        return 0;
    }
    struct probe_config *cfg = get_config();
    if (!cfg || !cfg->proto_flags || !pid_wanted(k.tgid, cfg))    /* see sock_io */
        return 0;
    struct active_op op = {};
    op.fd = fd;
    op.buf = buf;
    op.iovcnt = iovcnt;
    op.dir = dir;
    op.adopt = adopt;
    active.update(&id, &op);
    return 0;
}

#if HAVE_SOCK_LEN_TP
static __always_inline int mark_sock(u64 sk, u16 proto, int flags) {
    if (flags & 2)              /* MSG_PEEK: the bytes are read again later */
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    struct active_op *op = active.lookup(&id);
    if (op) {
        op->sock_seen = 1;
        op->sk = sk;
        op->l4proto = proto;
    }
    return 0;
}
#if !SOCK_HOOKS
TRACEPOINT_PROBE(sock, sock_send_length) { return mark_sock((u64)args->sk, args->protocol, 0); }
TRACEPOINT_PROBE(sock, sock_recv_length) {
    return mark_sock((u64)args->sk, args->protocol, args->flags);
}
#endif
#endif

/* Copy up to `len` bytes of the syscall's data into ev->data; returns bytes copied. */
static __always_inline u32 copy_data(struct data_evt_buf *ev, struct active_op *op, u32 len) {
    if (len > CAP_MAX)
        len = CAP_MAX;
    if (op->buf == 0)
        return 0;           /* sendfile: no user buffer */
    if (op->iovcnt == 0) {
        u32 n = len;
        CLAMP_CAP(n);
        if (n == 0)
            return 0;
        if (bpf_probe_read_user(ev->data, n, (void *)op->buf) != 0)
            return 0;
        return n;
    }
    u32 off = 0;
    u32 cnt = op->iovcnt;
#pragma unroll
    for (int i = 0; i < MAX_IOV; i++) {
        if (i >= cnt || off >= len)
            break;
        struct iovec iov = {};
        if (bpf_probe_read_user(&iov, sizeof(iov), (void *)(op->buf + i * sizeof(iov))) != 0)
            break;
        u32 n = iov.iov_len > (len - off) ? (len - off) : (u32)iov.iov_len;
        if (off >= CAP_MAX)
            break;
        u32 o = off;
        asm volatile("" : "+r"(o));     /* keep the mask: the verifier needs it */
        o &= (CAP_MAX - 1);
        CLAMP_CAP(n);
        if (n == 0)
            continue;
        if (bpf_probe_read_user(ev->data + o, n, iov.iov_base) != 0)
            break;
        off += n;
    }
    return off;
}

/* The first bytes of the syscall's data (at most HTTP_API_LEN + 1, from the first iovec
 * only): few verifier paths, unlike copy_data's loop, so that what follows stays cheap to
 * verify.  Returns bytes copied. */
static __always_inline u32 copy_head(struct data_evt_buf *ev, struct active_op *op, u32 len) {
    u64 src = op->buf;
    if (src == 0)
        return 0;
    if (op->iovcnt) {
        struct iovec iov = {};
        if (bpf_probe_read_user(&iov, sizeof(iov), (void *)src) != 0)
            return 0;
        src = (u64)iov.iov_base;
        if (iov.iov_len < len)
            len = iov.iov_len;
    }
    if (len > HTTP_API_LEN + 1)
        len = HTTP_API_LEN + 1;
    asm volatile("" : "+r"(len));
    len &= 127;
    if (len > HTTP_API_LEN + 1 || len == 0)
        return 0;
    if (bpf_probe_read_user(ev->data, len, (void *)src) != 0)
        return 0;
    return len;
}

/* Short reads before detection.  A server that reads a message's length prefix alone
 * (Kafka brokers read the 4-byte size, mongod the 16-byte header, dnsmasq the 2-byte DNS/TCP
 * length) gives detection a body without its prefix, and its first detectable bytes would be
 * its own response, often taken for a request: the side's role would come from the wrong
 * message.  So a short first read is kept here and joined with the next read of that
 * direction; when the joined bytes are detected, they are what decides the role (ingress
 * request: server), and the kept prefix goes to user space before the body. */

/* ev->data[0..DETECT_LEN) holds the first bytes of this read.  If a short read is kept for
 * this connection, builds kept prefix + these bytes in the scratch buffer and returns the
 * prefix length (*b, *count: what to detect on), else 0.  One l7_detect call site either
 * way: a second inlined copy does not fit the BPF stack. */
static __always_inline u32 join_short_read(struct data_evt_buf *ev, struct conn_key *k,
                                           u32 len, u8 **b, u32 *count) {
    struct short_read *sr = short_reads.lookup(k);
    if (!sr)
        return 0;
    u32 pl = sr->len;
    if (pl < 1 || pl > SHORT_MAX)
        return 0;
    u8 *zone = ev->data + CAP_MAX;              /* scratch beyond the detection bytes */
    __builtin_memset(zone, 0, 2 * SHORT_MAX + DETECT_LEN);
    u32 off = SHORT_MAX - pl;
    asm volatile("" : "+r"(off));
    off &= (SHORT_MAX - 1);
    bpf_probe_read_kernel(zone + off, SHORT_MAX, sr->data);
    __builtin_memcpy(zone + SHORT_MAX, ev->data, DETECT_LEN);
    *b = zone + off;
    *count = len + pl;
    return pl;
}

/* Detection failed on this read (n of len bytes in ev->data; b: these bytes after the kept
 * prefix of plen bytes, if any): keep what was read so far if it is still short (dnsmasq
 * reads the 2-byte DNS/TCP length one byte at a time), else forget it. */
static __always_inline void keep_short_read(struct data_evt_buf *ev, struct conn_key *k,
                                            u32 n, u32 len, u32 plen, u8 *b) {
    u32 total = len + plen;
    if (n >= len && total <= SHORT_MAX) {       /* n: DETECT_LEN bytes were read */
        /* built in the scratch buffer: the stack is full here */
        struct short_read *s = (struct short_read *)(ev->data + CAP_MAX + 64);
        s->len = total;
        bpf_probe_read_kernel(s->data, SHORT_MAX, b);
        short_reads.update(k, s);
    } else if (plen) {
        short_reads.delete(k);
    }
}

/* The kept prefix of a connection just detected on a joined read, as its first data record. */
static __always_inline void send_short_read(void *ctx, struct conn_val *c, struct conn_key *k,
                                            struct data_evt_buf *ev, struct probe_config *cfg) {
    struct short_read *sr = short_reads.lookup(k);
    if (!sr)
        return;
    u32 pl = sr->len;
    if (pl > SHORT_MAX)
        pl = SHORT_MAX;
    __builtin_memcpy(ev->data, sr->data, SHORT_MAX);
    short_reads.delete(k);
    if (!cfg->emit_data)
        return;
    ev->hdr.type = EVT_DATA;
    ev->hdr.tgid = k->tgid;
    ev->hdr.conn_id = c->conn_id;
    ev->hdr.ts = bpf_ktime_get_ns();
    ev->hdr.true_len = pl;
    ev->hdr.cap_len = pl;
    ev->hdr.lost = 0;
    ev->hdr.lost_msgs = 0;
    ev->hdr.flags = 0;
    ev->hdr.direction = DIR_INGRESS;
    ev->hdr.source = SRC_SYSCALL;
    ev->hdr.proto = c->proto;
    ev->hdr.l7_role = c->l7_role;
    if (output(ctx, ev, sizeof(struct evt_data) + pl, 0) != 0)
        stat_add(STAT_RECORDS_DROPPED, 1);
}

/* First data of a connection: detect its protocol on buffer `op`.  Returns 1 if the
 * connection now has a protocol (announced or not, see announce()). */
static __always_inline int detect_proto(void *ctx, struct conn_val *c, struct conn_key *k,
                                        struct data_evt_buf *ev, struct active_op *op, u32 len,
                                        u8 dir, struct probe_config *cfg, u8 source) {
    if (c->flags & CONN_F_IGNORED)
        return 0;
    __builtin_memset(ev->data, 0, DETECT_LEN);
    u32 n = copy_data(ev, op, DETECT_LEN);
    u8 *b = ev->data;
    u32 count = len;
    /* short reads are joined for syscall bytes in the clear only: TLS plaintext is whole,
       and a TLS record header read alone (OpenSSL reads 5 bytes first) is ciphertext */
    int joins = n && dir == DIR_INGRESS && source == SRC_SYSCALL &&
                !(cfg->tls && ev->data[0] >= 0x14 && ev->data[0] <= 0x17 && ev->data[1] == 0x03);
    if (source == SRC_SSL)
        short_reads.delete(k);
    u32 plen = joins ? join_short_read(ev, k, len, &b, &count) : 0;
    u32 r = n ? l7_detect(b, count, cfg->proto_flags) : 0;
    if (r == 0 && joins)
        keep_short_read(ev, k, n, len, plen, b);
    if (r != 0 && !detect_pairable(r, dir == DIR_EGRESS, c->flags))
        r = 0;      /* an answer to a request that was not detected: not counted either */
    if (r == 0) {
        /* TLS records before the TLS uprobes claim the connection are no attempt */
        u8 b0 = ev->data[0];
        if (cfg->tls && b0 >= 0x14 && b0 <= 0x17 && ev->data[1] == 0x03)
            return 0;
        c->tries += 1;
        c->flags |= detect_missed_flag(dir == DIR_EGRESS);
        if (c->tries >= DETECT_TRIES)
            c->flags |= CONN_F_IGNORED;
        return 0;
    }
    u8 msg = r & 0xff;
    c->proto = r >> 8;
    c->l7_role = ((dir == DIR_EGRESS) ^ (msg == MSG_RESPONSE)) ? L7_CLIENT : L7_SERVER;
    if (c->l4_role == L4_UDP && !(c->flags & CONN_F_SEEDED))
        c->l4_role = c->l7_role == L7_CLIENT ? L4_CLIENT : L4_SERVER;
    announce(ctx, c, k);
    if (plen)
        send_short_read(ctx, c, k, ev, cfg);
    return 1;
}

static __always_inline struct conn_acct *acct_of(struct conn_val *c, struct conn_acct *zero) {
    c->flags |= CONN_F_ACCT;
    return kacct.lookup_or_try_init(&c->conn_id, zero);
}

/* The buffer gather_body filled for this syscall's bytes, if it ran (*n: the bytes of it to
 * send, at most `want`), else 0. */
static __always_inline struct data_evt_buf *gathered(u32 want, u32 *n) {
    int zero = 0;
    struct pending_data *p = pending.lookup(&zero);
    if (!p || p->gather != GATHER_DONE)
        return 0;
    int cpu = bpf_get_smp_processor_id();
    struct data_evt_buf *g = gather_buf.lookup(&cpu);
    if (!g)
        return 0;
    u32 m = p->g_off;
    *n = m < want ? m : want;
    return g;
}

/* ---------------------------------------------------------------- DB capture policy ----
 *
 * MySQL and PostgreSQL clients wait for a response before they send the next command (the
 * classic protocol; PostgreSQL's pipeline mode aside), so a server answers in turns: the
 * server->client bytes between two client->server syscalls.  Their parsers need the head of
 * a turn (MySQL: OK / ERR / column count / a prepare's statement id; PostgreSQL: the first
 * messages, whole when the turn is short) and not the result rows.  So of each response turn
 * the kernel delivers the first DB_TURN_HEAD bytes (EVF_TURN on the first record,
 * EVF_TURN_CUT on the record where the head ends if more may follow) and skips the rest by
 * length: the next turn's first record carries it in `lost`, which user space skips cleanly
 * (pipeline/stream.py DataStream.cut_turn; the parsers count the answers they did not see
 * whole, protocol/mysql, protocol/pgsql).  Requests are captured as before. */
static __always_inline int db_turns(u8 proto) {
    return proto == PROTO_MYSQL || proto == PROTO_PGSQL;
}

/* The capture of one syscall of a DB connection: 0 to send nothing (the rest of a cut
 * response turn), else 1 with *want (bytes to copy) and *flags set. */
static __always_inline int db_capture(struct conn_val *c, u8 dir, u32 len, u32 *want,
                                      u32 *flags) {
    if ((dir == DIR_EGRESS) != (c->l7_role == L7_SERVER)) {
        c->turn_seen = 0;           /* a request: the next response bytes start a turn */
        return 1;
    }
    u32 seen = c->turn_seen;
    if (seen >= DB_TURN_HEAD)
        return 0;
    if (seen == 0)
        *flags |= EVF_TURN;
    u32 room = DB_TURN_HEAD - seen;
    if (len >= room) {
        *flags |= EVF_TURN_CUT;
        if (*want > room)
            *want = room;
        c->turn_seen = DB_TURN_HEAD;
    } else {
        c->turn_seen = seen + len;
    }
    return 1;
}

/* MySQL servers (mariadbd) read a command packet's 4-byte header and its payload in two
 * syscalls: the header is held here and delivered in front of the payload, one record
 * instead of two.  Only a plain read of exactly a header with sequence 0 is held (a command
 * is never shorter than 5 bytes, so its payload follows before any answer). */
BPF_TABLE("lru_hash", u64, u32, db_hdrs, 4096);

/* 1 if this syscall's bytes are such a header, now held (nothing to send). */
static __always_inline int db_hold_header(struct conn_val *c, struct active_op *op, u8 dir,
                                          u32 len) {
    if (c->proto != PROTO_MYSQL || len != 4 || op->iovcnt || !op->buf ||
        (dir == DIR_EGRESS) != (c->l7_role == L7_CLIENT))
        return 0;
    u32 h = 0;
    if (bpf_probe_read_user(&h, 4, (void *)op->buf) != 0 || (h >> 24) != 0 ||
        db_hdrs.lookup(&c->conn_id))
        return 0;
    db_hdrs.update(&c->conn_id, &h);
    return 1;
}

/* The header held for this connection (then forgotten), or 0 with *held 0.  A response
 * before the payload (never seen) leaves the header's bytes a gap. */
static __always_inline u32 db_take_header(struct conn_val *c, u8 dir, int *held) {
    *held = 0;
    if (c->proto != PROTO_MYSQL)
        return 0;
    u32 *h = db_hdrs.lookup(&c->conn_id);
    if (!h)
        return 0;
    u32 v = *h;
    db_hdrs.delete(&c->conn_id);
    if ((dir == DIR_EGRESS) != (c->l7_role == L7_CLIENT)) {
        if (dir == DIR_EGRESS)
            c->lost_recv += 4;
        else
            c->lost_sent += 4;
        return 0;
    }
    *held = 1;
    return v;
}

/* Send `len` bytes (a bounded prefix of them) of buffer `op` as a data record.  `flags`:
 * EVF_*.  Returns 1 if the record was delivered (or skipped by the capture policy); if not,
 * its bytes are a gap for user space. */
static __always_inline int send_data(void *ctx, struct conn_val *c, struct conn_key *k,
                                     struct data_evt_buf *ev, struct active_op *op, u32 len,
                                     u8 dir, u8 source, struct probe_config *cfg, u32 flags,
                                     int db) {
    u32 cap = cfg->cap_bytes;
    if (cap > CAP_MAX)
        cap = CAP_MAX;
    u32 want = len < cap ? len : cap;
    int held = 0;
    u32 hdr = 0;
    if (db && db_turns(c->proto)) {     /* `db`: a constant, 0 where HTTP's bytes go */
        if (!db_capture(c, dir, len, &want, &flags)) {
            add_lost(c, dir, len); /* skipped by length: see db_capture */
            return 1;
        }
        if (db_hold_header(c, op, dir, len))
            return 1;
        hdr = db_take_header(c, dir, &held);
    }
    u32 n = 0;
    struct data_evt_buf *g = gathered(want, &n);
    if (g) {
        ev = g;             /* the bytes of every iovec, gathered by gather_body */
    } else if (held && op->iovcnt == 0) {
        /* the held header, then this syscall's bytes (a plain buffer) */
        __builtin_memcpy(ev->data, &hdr, 4);
        n = want > CAP_MAX - 4 ? CAP_MAX - 4 : want;
        CLAMP_CAP(n);
        if (n == 0 || bpf_probe_read_user(ev->data + 4, n, (void *)op->buf) != 0)
            n = 0;
        n += 4;
        len += 4;
        held = 0;
    } else {
        n = copy_data(ev, op, want);
    }
    if (held) {                     /* not a plain buffer: the header's bytes are a gap */
        if (dir == DIR_EGRESS)
            c->lost_sent += 4;
        else
            c->lost_recv += 4;
    }
    CLAMP_CAP(n);
    ev->hdr.type = EVT_DATA;
    ev->hdr.tgid = k->tgid;
    ev->hdr.conn_id = c->conn_id;
    ev->hdr.ts = bpf_ktime_get_ns();
    ev->hdr.true_len = len;
    ev->hdr.cap_len = n;
    ev->hdr.direction = dir;
    ev->hdr.source = source;
    ev->hdr.proto = c->proto;
    ev->hdr.l7_role = c->l7_role;
    ev->hdr.lost = dir == DIR_EGRESS ? c->lost_sent : c->lost_recv;
    ev->hdr.lost_msgs = c->lost_msgs;
    ev->hdr.flags = flags;
    u32 size = sizeof(struct evt_data) + n;
    if (output(ctx, ev, size, 0) != 0) {
        stat_add(STAT_RECORDS_DROPPED, 1);
        stat_add(STAT_BYTES_DROPPED, len);
        int zero = 0;
        struct conn_acct *z = acct_zero.lookup(&zero);
        struct conn_acct *a = z ? acct_of(c, z) : 0;
        if (a)
            a->refused += 1;        /* per link, in l7_link's completeness fields */
        add_lost(c, dir, len);
        return 0;
    }
    if (dir == DIR_EGRESS)
        c->lost_sent = 0;
    else
        c->lost_recv = 0;
    c->lost_msgs = 0;
    return 1;
}

/* ---------------------------------------------------------------- HTTP/1.x in the kernel --
 *
 * Every HTTP/1.x request and response is counted exactly once: by the user-space parsers
 * when the syscall holding its first bytes was delivered, else here (map kacct).  A message
 * starts a syscall that begins with a request line or a status line (include/l7.h's
 * detect_http, the rule that found the protocol).  The kernel keeps the start times of the
 * requests awaiting their response (conn_val.fifo_*), so it knows the latency of every pair
 * whichever side was delivered.
 *
 * The sampler decides, at each request start, whether the transaction (the request and its
 * response, every syscall of them) is delivered: under a rate limit (probe_config
 * .sample_cost_ns) or when the ring buffer refuses the request, the whole transaction is
 * counted here instead, so user space sees gaps only at message boundaries (EVF_CLEAN_GAP).
 * A response the ring buffer refuses although its request was delivered is counted here and
 * announced to user space (lost_msgs), which then retires the request it answers.
 *
 * A syscall holding several requests counts as one here: so the sampler sheds only on
 * connections user space saw send one request per syscall (map shed_ok). */

static __always_inline void acct_response(struct conn_acct *a, u32 status, u64 lat, int has) {
    a->resp += 1;
    if (status >= 500)
        a->err_server += 1;
    else if (status >= 400)
        a->err_client += 1;
    if (!has)
        return;
    a->lat_n += 1;
    a->lat_sum += lat;
    if (lat > a->lat_max)
        a->lat_max = lat;
    /* the buckets of pipeline/aggregate.py BOUNDS: v lands in i iff bound[i-1] < v <= bound[i] */
    u32 i = lat <= 10000000ULL ? 0 : lat <= 50000000ULL ? 1 : lat <= 100000000ULL ? 2 :
            lat <= 500000000ULL ? 3 : lat <= 1000000000ULL ? 4 : lat <= 3000000000ULL ? 5 :
            lat <= 10000000000ULL ? 6 : 7;
    if (lat == 0)
        i = 7;                      /* not a bucket's (as Histogram.add): counted in the sum */
    if (i < 8)
        a->bucket[i & 7] += 1;
}

/* Count a request (is_resp 0) or a response in the kernel's counts of its connection and of
 * its API (api 0: unknown). */
static __always_inline void kcount(struct conn_val *c, u64 api, int is_resp, u32 status,
                                   u64 lat, int has_lat, int sampled) {
    int idx = 0;
    struct conn_acct *zero = acct_zero.lookup(&idx);
    if (!zero)
        return;
    struct conn_acct *a = acct_of(c, zero);
    struct conn_acct *b = 0;
    if (api) {
        struct api_key key = {.conn_id = c->conn_id, .api = api};
        b = kapi.lookup_or_try_init(&key, zero);
    }
    if (is_resp) {
        if (a)
            acct_response(a, status, lat, has_lat);
        if (b)
            acct_response(b, status, lat, has_lat);
        return;
    }
    if (a) {
        a->req += 1;
        a->sampled_out += sampled;
    }
    if (b) {
        b->req += 1;
        b->sampled_out += sampled;
    }
}

/* Not an interim (1xx) response, which precedes the answer; 101 Switching Protocols is one. */
static __always_inline int http_final(u32 status) {
    return status < 100 || status >= 200 || status == 101;
}

/* The token bucket: 1 if this transaction is to be delivered. */
static __always_inline int sample_ok(struct probe_config *cfg, u64 now) {
    u32 cost = cfg->sample_cost_ns;
    if (cost == 0)
        return 1;
    int zero = 0;
    struct sampler_state *s = sampler.lookup(&zero);
    if (!s)
        return 1;
    u64 credit = s->credit + (now - s->last);
    s->last = now;
    if (credit > cfg->sample_burst_ns)
        credit = cfg->sample_burst_ns;
    if (credit < cost) {
        s->credit = credit;
        return 0;
    }
    s->credit = credit - cost;
    return 1;
}

static __always_inline void http_bytes(void *ctx, struct conn_val *c, struct conn_key *k,
                                       struct data_evt_buf *ev, struct active_op *op, u32 len,
                                       u8 dir, u8 source, struct probe_config *cfg,
                                       int hidden) {
    int req_dir = (dir == DIR_EGRESS) == (c->l7_role == L7_CLIENT);
    u8 bit = req_dir ? SHED_REQ : SHED_RESP;
    __builtin_memset(ev->data, 0, HTTP_API_LEN + 1);
    u32 n = copy_head(ev, op, len);
    u32 r = n >= 12 ? detect_http(ev->data, n) : 0;
    u32 kind = r >> 8 == PROTO_HTTP ? (r & 0xff) : MSG_UNKNOWN;
    u64 now = bpf_ktime_get_ns();
    int start = 0, deliver, has = 0, req_dlv = 1, ask = 0;
    u32 status = 0;
    u64 req_ts = 0, api = 0;
    u8 slot = 0;
    if (req_dir && kind == MSG_REQUEST) {
        start = 1;
        api = http_api_hash(ev->data, n);
        int sampled_out = 0;
        /* a connection that pipelines is never sampled: the kernel sees one request per
           syscall, the parsers see them all.  A request while another awaits its answer
           is pipelining too (h2load --h1 -m 2: a shed request between delivered ones
           broke the pairing of the client's side) */
        if (c->fifo_head != c->fifo_tail)
            c->flags |= CONN_F_PIPELINED;
        if (!hidden && !(c->flags & CONN_F_PIPELINED)) {
            if (apis_known.lookup(&api))
                sampled_out = !sample_ok(cfg, now);
            else
                ask = 1;    /* delivered: its name is asked of user space (below) */
        }
        /* The kernel cannot tell a syscall of two requests from one of one (h2load --h1
           -m 2 writes both in one writev, and both answers arrive in one read: no answer
           is left unpaired).  So it sheds only on a connection user space cleared (map
           shed_ok): once, then the flag saves the lookup. */
        if (sampled_out && !(c->flags2 & CONN_F2_SHED_OK)) {
            u64 id = c->conn_id;
            if (shed_ok.lookup(&id)) {
                c->flags2 |= CONN_F2_SHED_OK;
                shed_ok.delete(&id);
            } else {
                sampled_out = 0;
            }
        }
        deliver = !hidden && !sampled_out;
        slot = c->fifo_tail & (FIFO_LEN - 1);
        c->fifo_ts[slot] = now;
        c->fifo_api[slot] = api;
        c->fifo_dlv[slot] = deliver;
        c->fifo_tail += 1;
        if ((u8)(c->fifo_tail - c->fifo_head) > FIFO_LEN)
            c->fifo_head += 1;      /* pipelined past FIFO_LEN: the oldest loses its latency */
        if (!deliver) {
            kcount(c, api, 0, 0, 0, 0, sampled_out);
            if (sampled_out)
                stat_add(STAT_SAMPLED_OUT, 1);
        }
    } else if (!req_dir && kind == MSG_RESPONSE) {
        start = 1;
        status = (ev->data[9] - '0') * 100 + (ev->data[10] - '0') * 10 + (ev->data[11] - '0');
        if (ev->data[10] < '0' || ev->data[10] > '9' || ev->data[11] < '0' || ev->data[11] > '9')
            status = 0;
        if (c->fifo_head != c->fifo_tail) {
            slot = c->fifo_head & (FIFO_LEN - 1);
            req_dlv = c->fifo_dlv[slot];
            if (http_final(status)) {
                has = 1;
                req_ts = c->fifo_ts[slot];
                api = c->fifo_api[slot];
                c->fifo_head += 1;
            }
        }
        if (!has && http_final(status)) {
            /* An answer to a request the kernel did not see start: one of several pipelined
               in one syscall.  From now on every transaction of this connection is
               delivered.  If that syscall was not delivered, its request is counted here,
               with this answer (no latency: its start is unknown). */
            c->flags |= CONN_F_PIPELINED;
            if (c->shed & SHED_REQ) {
                req_dlv = 0;
                api = c->fifo_api[(c->fifo_tail - 1) & (FIFO_LEN - 1)];
                kcount(c, api, 0, 0, 0, 0, 0);
                kcount(c, api, 1, status, 0, 0, 0);
            }
        }
        /* a response follows its request: delivered if it was (the interim ones too) */
        deliver = req_dlv && !hidden;
        if (!deliver && has)
            kcount(c, api, 1, status, now - req_ts, 1, 0);
    } else {
        deliver = !(c->shed & bit) && !hidden;  /* the rest of the current message */
    }
    if (start) {
        if (deliver)
            c->shed &= ~bit;
        else
            c->shed |= bit;
    }
    if (!deliver) {
        add_lost(c, dir, len);
        return;
    }
    u32 lost = dir == DIR_EGRESS ? c->lost_sent : c->lost_recv;
    u32 flags = (start && lost && !(c->hard_gap & bit)) ? EVF_CLEAN_GAP : 0;
    if (send_data(ctx, c, k, ev, op, len, dir, source, cfg, flags, 0)) {
        c->hard_gap &= ~bit;
        if (ask) {
            /* The first request of an API user space has no name for is on its way: the
               API counts as known from now on, and its next requests are sampled (not all
               delivered until user space has written the name, which took ~0.5 s of full
               delivery at start-up under load).  If user space fails to name it from this
               one, a later sampled request names it (until then its requests are in
               l7_rpc, not in l7_rpc_api, said per period). */
            u8 asked = 2;
            apis_known.update(&api, &asked);
        }
        return;
    }
    /* the ring buffer is full */
    if (!start) {
        c->hard_gap |= bit;         /* inside a message: user space resynchronises */
        return;
    }
    c->shed |= bit;
    if (req_dir) {
        /* the transaction goes on uncounted by user space: count it here, whole */
        c->fifo_dlv[slot] = 0;
        kcount(c, api, 0, 0, 0, 0, 0);
        return;
    }
    if (http_final(status))
        kcount(c, api, 1, status, now - req_ts, has, 0);
    if (has)
        c->lost_msgs += 1;          /* its request was delivered: user space retires it */
}

/* Bytes of a tracked connection: detect, then send.  `op` says where they are. */
/* `active_id`: the thread whose syscall's `active` entry `op` is (0: none); the entry is
 * deleted before the tail call, which never returns to the caller's clean-up. */
static __always_inline void handle_bytes(void *ctx, struct conn_val *c, struct conn_key *k,
                                         struct active_op *op, u32 len, u8 dir, u8 source,
                                         int from_uprobe, u64 active_id) {
    /* Detection and the data path run as a program of their own (a tail call): verified
     * once, not once per path of every hook that gets here, and with a stack of its own. */
    int zero = 0;
    struct pending_data *p = pending.lookup(&zero);
    if (!p)
        return;
    p->k = *k;
    p->op = *op;
    if (active_id)
        active.delete(&active_id);
    p->len = len;
    p->dir = dir;
    p->source = source;
    p->gather = GATHER_NONE;
    /* `from_uprobe` (the caller's program type) is a constant at each inlined call site: a
       program references only the array of its own type */
    if (from_uprobe)
        data_tail_up.call(ctx, 0);
    else
        data_tail_sys.call(ctx, 0);
    data_gap(c, dir, len);                  /* the tail call failed */
}

/* Bytes of a tracked connection (handle_bytes, then a tail call): detect, then deliver or
 * count them.  `sys`: called by the syscall hooks (a constant per program). */
static __always_inline int data_body(void *ctx, int sys) {
    int zero = 0;
    struct pending_data *p = pending.lookup(&zero);
    if (!p)
        return 0;
    struct conn_key k = p->k;
    struct conn_val *c = conns.lookup(&k);
    struct probe_config *cfg = get_config();
    int cpu = bpf_get_smp_processor_id();
    struct data_evt_buf *ev = scratch.lookup(&cpu);
    if (!c || !cfg || !ev)
        return 0;
    u32 len = p->len;
    u8 dir = p->dir;
    struct active_op *op = &p->op;
    if (sys && p->gather == GATHER_NONE && op->iovcnt > MAX_IOV && op->buf &&
        cfg->emit_data && !(c->flags & CONN_F_IGNORED)) {
        /* more iovecs than copy_data walks: gather them first (gather_body), which comes
           back here with p->gather GATHER_DONE */
        u32 cap = cfg->cap_bytes;
        if (cap > CAP_MAX)
            cap = CAP_MAX;
        p->g_want = len < cap ? len : cap;
        p->g_idx = 0;
        p->g_off = 0;
        p->g_calls = 0;
        p->gather = GATHER_RUNNING;
        data_tail_sys.call(ctx, 1);
        /* not reached (bpf/loader.py sets it up, or fails): the bytes are a gap (going on
           here would double what the verifier explores) */
        data_gap(c, dir, len);
        return 0;
    }
    if (c->proto == PROTO_UNKNOWN) {
        if (!detect_proto(ctx, c, &k, ev, op, len, dir, cfg, p->source))
            return 0;
    } else if (c->flags & CONN_F_UNANNOUNCED) {
        announce(ctx, c, &k);
    }
    if (!cfg->emit_data)
        return 0;
    int hidden = (c->flags & CONN_F_UNANNOUNCED) != 0;
    if (op->buf == 0) {
        /* sendfile: no bytes to show; the next record of this direction carries the
           count so the parser skips them (one record less per static response) */
        add_lost(c, dir, len);
        return 0;
    }
    if (c->proto == PROTO_HTTP) {
        http_bytes(ctx, c, &k, ev, op, len, dir, p->source, cfg, hidden);
        return 0;
    }
    if (hidden) {
        add_lost(c, dir, len);
        return 0;
    }
    send_data(ctx, c, &k, ev, op, len, dir, p->source, cfg, 0, 1);
    return 0;
}

/* Gather the bytes of a syscall's iovecs past what copy_data walks (see gather_buf), from
 * iovec p->g_idx on, GATHER_IOV per run; then again (a tail call of itself) or back to the
 * data program, which sends them.  The walk stops at g_want bytes, at the last iovec, at a
 * read that fails (the bytes after are not captured: a gap for user space, as past
 * --capture-bytes), or after GATHER_CALLS runs. */
static __always_inline int gather_body(void *ctx) {
    int zero = 0;
    struct pending_data *p = pending.lookup(&zero);
    if (!p)
        return 0;
    int cpu = bpf_get_smp_processor_id();
    struct data_evt_buf *g = gather_buf.lookup(&cpu);
    if (!g || p->gather != GATHER_RUNNING) {
        p->gather = GATHER_FAILED;      /* the data program uses copy_data instead */
        data_tail_sys.call(ctx, 0);
        return 0;
    }
    u32 idx = p->g_idx, off = p->g_off, want = p->g_want, cnt = p->op.iovcnt;
    if (want > CAP_MAX)
        want = CAP_MAX;
    /* this run's iovecs, read at once into the buffer's upper half, which the bytes never
       reach (they stay below want <= CAP_MAX) */
    struct iovec *vec = (struct iovec *)(g->data + CAP_MAX);
    u32 batch = idx < cnt ? cnt - idx : 0;
    if (batch > GATHER_IOV)
        batch = GATHER_IOV;
    u32 size = batch * sizeof(struct iovec);
    asm volatile("" : "+r"(size));
    if (size > GATHER_IOV * sizeof(struct iovec))
        size = GATHER_IOV * sizeof(struct iovec);
    if (size == 0 ||
        bpf_probe_read_user(vec, size, (void *)(p->op.buf + (u64)idx * sizeof(struct iovec))))
        batch = 0;
    if (batch == 0)
        cnt = 0;                        /* unreadable: the walk ends here */
#pragma unroll
    for (int i = 0; i < GATHER_IOV; i++) {
        if (i >= batch || off >= want)
            break;
        idx += 1;
        u64 ilen = vec[i].iov_len;
        u32 n = ilen > (want - off) ? (want - off) : (u32)ilen;
        u32 o = off;
        asm volatile("" : "+r"(o));     /* keep the mask: the verifier needs it */
        o &= (CAP_MAX - 1);
        CLAMP_CAP(n);
        /* n may be 0 (an empty iovec): the helper accepts a zero size */
        if (bpf_probe_read_user(g->data + o, n, vec[i].iov_base) != 0) {
            cnt = 0;
            break;
        }
        off += n;
    }
    p->g_idx = idx;
    p->g_off = off;
    p->g_calls += 1;
    if (idx < cnt && off < want && p->g_calls < GATHER_CALLS)
        data_tail_sys.call(ctx, 1);
    p->gather = GATHER_DONE;
    data_tail_sys.call(ctx, 0);
    struct conn_key k = p->k;
    struct conn_val *c = conns.lookup(&k);
    if (c)
        data_gap(c, p->dir, p->len);
    return 0;
}

/* One copy per program type that tail-calls it (bpf/loader.py fills data_tail_*). */
int l7_data_tp(void *ctx) { return data_body(ctx, 1); }
int l7_data_kp(struct pt_regs *ctx) { return data_body(ctx, 0); }
int l7_gather_tp(void *ctx) { return gather_body(ctx); }
#if RAW_SYSCALLS
int l7_data_raw(struct bpf_raw_tracepoint_args *ctx) { return data_body(ctx, 1); }
int l7_gather_raw(struct bpf_raw_tracepoint_args *ctx) { return gather_body(ctx); }
#endif

#if TLS
#include "tls.h"        /* spliced in by bpf/loader.py (BCC rewrites map calls only here) */
#endif

#if HAVE_SOCK_LEN_TP
#include "udp.h"        /* spliced in by bpf/loader.py, like tls.h */
#endif

#if HAVE_SOCK_LEN_TP
/* A socket a forked process inherited (op->adopt): track it from now on like an accepted or
 * connected one if it is an established TCP connection whose role the handshake told
 * (inet_sock_set_state); otherwise ignore this fd until it is closed. */
static __always_inline struct conn_val *adopt_conn(struct conn_key *k, u64 sk) {
    struct conn_val c = {};
    c.sk = sk;          /* also of an ignored one: another socket on this fd ends it */
    struct sk_addr *a = sk ? sk_addrs.lookup(&sk) : 0;
    int ok = a && a->l4_role;
    if (ok) {
        c.l4_role = a->l4_role;
        c.conn_id = new_conn_id();
    } else {
        c.flags = CONN_F_IGNORED;
    }
    if (conns.update(k, &c) != 0) {
        stat_add(STAT_CONNS_DROPPED, 1);
        return 0;
    }
    return ok ? conns.lookup(k) : 0;
}
#endif

/* `len` bytes of a socket syscall on tracked connection `c`: count them, then deliver
 * (plaintext) or tie them to the TLS call under way (ciphertext).  `active_id`: see
 * handle_bytes. */
static __always_inline void conn_io(void *ctx, u64 id, struct conn_val *c, struct conn_key *kp,
                                    struct active_op *op, u32 len, u64 active_id) {
    struct conn_key k = *kp;
    u8 dir = op->dir;
    count_io(c, dir, len);
    conn_fill_addr(c, op->sk);
#if TLS
    /* may end in a tail call (the plaintext of an SSL_write whose socket shows now):
       the syscall's own bytes are ciphertext then, nothing more to do */
    tls_nested_syscall(ctx, id, c, &k, dir);     /* may end in a tail call, see there */
#endif
    if (!c->ssl)            /* else ciphertext: the plaintext comes from the TLS uprobes */
        handle_bytes(ctx, c, &k, op, len, dir, SRC_SYSCALL, 0, active_id);
}

static __always_inline int exit_data(void *ctx, long ret) {
    u64 id = bpf_get_current_pid_tgid();
    struct active_op *p = active.lookup(&id);
    if (!p)
        return 0;
#if HAVE_SOCK_LEN_TP
    if (p->l4proto == IPPROTO_UDP_ && ret > 0 && p->sock_seen) {
        /* udp.h's datagrams, in a program of their own (tail call): inlined here they
           would not fit the 512-byte BPF stack.  It reads and deletes the entry. */
        p->ret = ret;
        udp_tail.call(ctx, 0);
        active.delete(&id);         /* the tail call failed */
        return 0;
    }
#endif
    /* handle_bytes ends in a tail call, which never returns here: it deletes the entry
       (a stale one would lend this syscall's fd to the next syscall) */
    struct active_op *op = p;
    if (ret <= 0)
        goto out;
#if HAVE_SOCK_LEN_TP
    if (!op->sock_seen)
        goto out;           /* not a socket (the fd was reused by a file, ...) */
#endif
    struct conn_key k = {.tgid = id >> 32, .fd = op->fd};
    struct conn_val *c = conns.lookup(&k);
    if (!c) {
#if HAVE_SOCK_LEN_TP
        if (!op->adopt || !(c = adopt_conn(&k, op->sk)))
            goto out;
#else
        goto out;
#endif
    }
    conn_io(ctx, id, c, &k, op, ret, id);
out:
    active.delete(&id);
    return 0;
}

static __always_inline int enter_msg(int fd, const struct user_msghdr *umsg, u8 dir) {
    struct user_msghdr m = {};
    if (bpf_probe_read_user(&m, sizeof(m), umsg) != 0)
        return 0;
    return enter_data(fd, (u64)m.msg_iov, m.msg_iovlen, dir);
}

/* Syscalls that may carry a datagram's peer address (sendto/recvfrom/sendmsg/recvmsg) or
 * several datagrams (sendmmsg/recvmmsg): as enter_data, plus the address; on a socket not
 * tracked yet, when DNS is enabled, the syscall is watched too: at exit, a UDP socket
 * becomes a connection (udp.h), anything else is dropped. */
static __always_inline int enter_dgram(int fd, u64 buf, u32 iovcnt, u8 dir, u64 name,
                                       u64 msgs) {
    if (!msgs)
        enter_data(fd, buf, iovcnt, dir);
    u64 id = bpf_get_current_pid_tgid();
    struct active_op *op = msgs ? 0 : active.lookup(&id);
    if (op && op->fd == fd && !op->is_accept && !op->is_connect) {
        op->name = name;
        return 0;
    }
    struct probe_config *cfg = get_config();
    if (!cfg || !(cfg->proto_flags & FLAG_DNS) || !pid_wanted(id >> 32, cfg))
        return 0;
    struct conn_key k = {.tgid = id >> 32, .fd = fd};
    struct conn_val *c = conns.lookup(&k);
    if (c && (c->flags & CONN_F_IGNORED))
        return 0;
    if (!msgs && !name && !c)
        return 0;               /* no address, not tracked: not a datagram we can place */
    struct active_op o = {};
    o.fd = fd;
    o.buf = buf;
    o.iovcnt = iovcnt;
    o.dir = dir;
    o.name = name;
    o.msgs = msgs;
    active.update(&id, &o);
    return 0;
}

static __always_inline int enter_msg_dgram(int fd, const struct user_msghdr *umsg, u8 dir) {
    struct user_msghdr m = {};
    if (bpf_probe_read_user(&m, sizeof(m), umsg) != 0)
        return 0;
    return enter_dgram(fd, (u64)m.msg_iov, m.msg_iovlen, dir, (u64)m.msg_name, 0);
}

/* x86-64 syscall numbers (raw_syscalls and sock hooks tell the syscall by them) */
#define NR_read 0
#define NR_write 1
#define NR_close 3
#define NR_readv 19
#define NR_writev 20
#define NR_sendfile 40
#define NR_connect 42
#define NR_accept 43
#define NR_sendto 44
#define NR_recvfrom 45
#define NR_sendmsg 46
#define NR_recvmsg 47
#define NR_accept4 288
#define NR_recvmmsg 299
#define NR_sendmmsg 307
#define NR_splice 275

#if SOCK_HOOKS
/* No syscall hook at all: a syscall tracepoint, once enabled, sends every syscall of every
 * task on the host through the slow path (measured here: +60-100 ns per syscall of processes
 * the probe does not care about).  sock:sock_send_length / sock_recv_length fire inside the
 * send or receive of a socket, in the calling thread, after the data moved; the syscall's
 * arguments are in the thread's user registers (bpf_task_pt_regs), its result for this socket
 * is the tracepoint's `ret`.  One BPF run per socket operation instead of two per syscall.
 * Connections: a socket is adopted at its first data, its role from its handshake
 * (sock:inet_sock_set_state, sk_addrs) or from user space (seed_connection, connections of
 * before the start); it ends at tcp:tcp_destroy_sock (the process closed it and TCP is
 * done), or when its fd turns up with another socket.  x86-64 (registers, numbers). */
BPF_TABLE("lru_hash", u64, struct conn_key, sk_conn, 65536);   /* sk -> its connection */
struct mmsg_pos {
    u64 msgs;
    u32 next;
    u32 pad;
};
BPF_TABLE("lru_hash", u64, struct mmsg_pos, mmsg_at, 4096);    /* by thread */
#define MSG_PEEK_ 2
#define IPPROTO_TCP_ 6

/* Which datagram of a sendmmsg/recvmmsg (array `msgs`, `vlen` entries) this socket operation
 * is: the kernel sends or receives them in order, one socket operation each, and stops after
 * the first that fails (which fires too, with ret < 0). */
static __always_inline u32 mmsg_index(u64 id, u64 msgs, u32 vlen, int ret) {
    struct mmsg_pos *p = mmsg_at.lookup(&id);
    u32 i = (p && p->msgs == msgs && p->next < vlen) ? p->next : 0;
    if (ret < 0 || i + 1 >= vlen) {
        if (p)
            mmsg_at.delete(&id);
    } else {
        struct mmsg_pos n = {.msgs = msgs, .next = i + 1};
        mmsg_at.update(&id, &n);
    }
    return i;
}

static __always_inline int sock_io(void *ctx, u64 sk, u16 family, u16 protocol, int ret,
                                   int flags, u8 dir) {
    if ((family != AF_INET_ && family != AF_INET6_) ||
        (protocol != IPPROTO_TCP_ && protocol != IPPROTO_UDP_))
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    struct probe_config *cfg = get_config();
    /* proto_flags 0: user space has not configured the probe yet (the hooks are attached
       when BCC loads them, before the data program is in its array) */
    if (!cfg || !cfg->proto_flags || !pid_wanted(id >> 32, cfg))
        return 0;
    if (dir == DIR_INGRESS && (flags & MSG_PEEK_))
        return 0;               /* the bytes stay queued: the real read comes later */
    /* user registers r8 .. orig_ax (struct pt_regs order): r8 ax cx dx si di orig_ax */
    u64 v[7] = {};
    struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
    if (!regs || bpf_probe_read_kernel(v, sizeof(v),
                                       (void *)((u64)regs + offsetof(struct pt_regs, r8))))
        return 0;
    u64 nr = v[6], a0 = v[5], a1 = v[4], a2 = v[3], a4 = v[0];
    struct active_op op = {};
    op.dir = dir;
    op.sock_seen = 1;
    op.sk = sk;
    op.l4proto = protocol;
    op.fd = (s32)a0;
    switch (nr) {
    case NR_read:
    case NR_write:
        op.buf = a1;
        break;
    case NR_sendto:
    case NR_recvfrom:
        op.buf = a1;
        op.name = dir == DIR_EGRESS ? a4 : 0;   /* a receive writes it only afterwards */
        break;
    case NR_readv:
    case NR_writev:
        op.buf = a1;
        op.iovcnt = (u32)a2;
        break;
    case NR_sendmsg:
    case NR_recvmsg:
    case NR_sendmmsg:
    case NR_recvmmsg: {
        u64 at = a1;
        if (nr == NR_sendmmsg || nr == NR_recvmmsg)
            at += (u64)mmsg_index(id, a1, (u32)a2, ret) * 64;   /* sizeof(struct mmsghdr) */
        if (ret <= 0)
            return 0;
        struct user_msghdr m = {};
        if (bpf_probe_read_user(&m, sizeof(m), (void *)at) != 0)
            return 0;
        op.buf = (u64)m.msg_iov;
        op.iovcnt = m.msg_iovlen;
        op.name = dir == DIR_EGRESS ? (u64)m.msg_name : 0;
        break;
    }
    case NR_sendfile:
        break;                  /* no user buffer: counted, skipped by length */
    case NR_splice:
        op.fd = (s32)(dir == DIR_EGRESS ? a2 : a0);
        break;
    default:
        return 0;               /* io_uring, kernel users of sockets, ...: not a syscall's */
    }
    if (ret <= 0)
        return 0;
    struct conn_key k = {.tgid = id >> 32, .fd = op.fd};
    struct conn_val *c = conns.lookup(&k);
    if (c && c->sk && c->sk != sk) {
        close_conn(ctx, &k, c);     /* the fd names another socket now: the old one ended */
        c = 0;
    }
    if (protocol == IPPROTO_UDP_) {
        if (!(cfg->proto_flags & FLAG_DNS) || (c && (c->flags & CONN_F_IGNORED)))
            return 0;
        /* udp.h's datagrams, in a program of their own (tail call), which reads and
           deletes the `active` entry */
        op.ret = ret;
        active.update(&id, &op);
        udp_tail.call(ctx, 0);
        active.delete(&id);         /* the tail call failed */
        return 0;
    }
    if (!c) {
        c = adopt_conn(&k, sk);
        sk_conn.update(&sk, &k);    /* also an ignored one: its entry goes with the socket */
        if (!c)
            return 0;
    } else if (c->sk != sk) {
        c->sk = sk;                 /* a connection user space seeded */
        sk_conn.update(&sk, &k);
    }
    if (c->flags & CONN_F_IGNORED)
        return 0;
    conn_io(ctx, id, c, &k, &op, ret, 0);
    return 0;
}

TRACEPOINT_PROBE(sock, sock_send_length) {
    return sock_io(args, (u64)args->sk, args->family, args->protocol, args->ret, args->flags,
                   DIR_EGRESS);
}
TRACEPOINT_PROBE(sock, sock_recv_length) {
    return sock_io(args, (u64)args->sk, args->family, args->protocol, args->ret, args->flags,
                   DIR_INGRESS);
}

/* The process closed the socket and TCP is done with it. */
TRACEPOINT_PROBE(tcp, tcp_destroy_sock) {
    u64 sk = (u64)args->skaddr;
    struct conn_key *kp = sk_conn.lookup(&sk);
    if (!kp)
        return 0;
    struct conn_key k = *kp;
    sk_conn.delete(&sk);
    struct conn_val *c = conns.lookup(&k);
    if (c && c->sk == sk)
        close_conn(args, &k, c);
    return 0;
}
#endif

#if RAW_SYSCALLS
/* Two raw tracepoints instead of 26 syscall tracepoints: the BPF program is called directly
 * with the user registers (no per-event record built by the kernel, cheaper per hooked
 * syscall), and detaching takes milliseconds instead of one RCU grace period per
 * tracepoint (~2 s in all), which matters to gala-gopher's stop.  x86-64 numbers. */

/* the syscalls hooked: both raw programs return at once for any other */
#define HOOKED_NR(nr) ((nr) == NR_read || (nr) == NR_write || (nr) == NR_close ||           \
    (nr) == NR_readv || (nr) == NR_writev || (nr) == NR_sendfile || (nr) == NR_connect ||   \
    (nr) == NR_accept || (nr) == NR_sendto || (nr) == NR_recvfrom || (nr) == NR_sendmsg ||  \
    (nr) == NR_recvmsg || (nr) == NR_accept4 || (nr) == NR_recvmmsg || (nr) == NR_sendmmsg)

RAW_TRACEPOINT_PROBE(sys_enter) {
    long nr = ctx->args[1];
    if (!HOOKED_NR(nr))
        return 0;
    struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
    u64 a0 = 0, a1 = 0, a2 = 0;
    bpf_probe_read_kernel(&a0, sizeof(a0), &regs->di);
    bpf_probe_read_kernel(&a1, sizeof(a1), &regs->si);
    bpf_probe_read_kernel(&a2, sizeof(a2), &regs->dx);
    int fd = (int)a0;
    switch (nr) {
    case NR_recvfrom:
    case NR_sendto: {
        u64 a4 = 0;
        bpf_probe_read_kernel(&a4, sizeof(a4), &regs->r8);
        return enter_dgram(fd, a1, 0, nr == NR_sendto ? DIR_EGRESS : DIR_INGRESS, a4, 0);
    }
    case NR_recvmmsg:
        return enter_dgram(fd, 0, 0, DIR_INGRESS, 0, a1);
    case NR_sendmmsg:
        return enter_dgram(fd, 0, 0, DIR_EGRESS, 0, a1);
    case NR_read:
        return enter_data(fd, a1, 0, DIR_INGRESS);
    case NR_write:
        return enter_data(fd, a1, 0, DIR_EGRESS);
    case NR_readv:
        return enter_data(fd, a1, (u32)a2, DIR_INGRESS);
    case NR_writev:
        return enter_data(fd, a1, (u32)a2, DIR_EGRESS);
    case NR_sendmsg:
        return enter_msg_dgram(fd, (const struct user_msghdr *)a1, DIR_EGRESS);
    case NR_recvmsg:
        return enter_msg_dgram(fd, (const struct user_msghdr *)a1, DIR_INGRESS);
    case NR_sendfile:
        return enter_data(fd, 0, 0, DIR_EGRESS);
    case NR_connect:
        return enter_conn_op(fd, 0, 1, (const struct sockaddr *)a1);
    case NR_accept:
    case NR_accept4:
        return enter_conn_op(fd, 1, 0, 0);
    case NR_close:
        return do_close(ctx, fd);
    }
    return 0;
}

RAW_TRACEPOINT_PROBE(sys_exit) {
    /* every syscall of the host passes here: the syscall number first (pt_regs is the
       x86-64 ABI's), the hash lookup only for the syscalls sys_enter kept */
    struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
    long nr = -1;
    bpf_probe_read_kernel(&nr, sizeof(nr), &regs->orig_ax);
    if (!HOOKED_NR(nr))
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    struct active_op *op = active.lookup(&id);
    if (!op)
        return 0;
    long ret = ctx->args[1];
    if (op->is_accept || op->is_connect)
        return exit_conn_op(ret);
    return exit_data(ctx, ret);
}

#elif !SOCK_HOOKS
TRACEPOINT_PROBE(syscalls, sys_enter_write) { return enter_data(args->fd, (u64)args->buf, 0, DIR_EGRESS); }
TRACEPOINT_PROBE(syscalls, sys_exit_write) { return exit_data(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_read) { return enter_data(args->fd, (u64)args->buf, 0, DIR_INGRESS); }
TRACEPOINT_PROBE(syscalls, sys_exit_read) { return exit_data(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_writev) { return enter_data(args->fd, (u64)args->vec, args->vlen, DIR_EGRESS); }
TRACEPOINT_PROBE(syscalls, sys_exit_writev) { return exit_data(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_readv) { return enter_data(args->fd, (u64)args->vec, args->vlen, DIR_INGRESS); }
TRACEPOINT_PROBE(syscalls, sys_exit_readv) { return exit_data(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendto) { return enter_dgram(args->fd, (u64)args->buff, 0, DIR_EGRESS, (u64)args->addr, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendto) { return exit_data(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvfrom) { return enter_dgram(args->fd, (u64)args->ubuf, 0, DIR_INGRESS, (u64)args->addr, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_recvfrom) { return exit_data(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg) { return enter_msg_dgram(args->fd, args->msg, DIR_EGRESS); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendmsg) { return exit_data(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvmsg) { return enter_msg_dgram(args->fd, args->msg, DIR_INGRESS); }
TRACEPOINT_PROBE(syscalls, sys_exit_recvmsg) { return exit_data(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendmmsg) { return enter_dgram(args->fd, 0, 0, DIR_EGRESS, 0, (u64)args->mmsg); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendmmsg) { return exit_data(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvmmsg) { return enter_dgram(args->fd, 0, 0, DIR_INGRESS, 0, (u64)args->mmsg); }
TRACEPOINT_PROBE(syscalls, sys_exit_recvmmsg) { return exit_data(args, args->ret); }

/* sendfile: bytes cross the socket without passing through a user buffer.  Count them and
 * tell user space how many, so stream parsing skips them (nginx serves static bodies so). */
TRACEPOINT_PROBE(syscalls, sys_enter_sendfile64) {
    return enter_data(args->out_fd, 0, 0, DIR_EGRESS);
}
TRACEPOINT_PROBE(syscalls, sys_exit_sendfile64) { return exit_data(args, args->ret); }
#endif

/* TLS plaintext from uprobes (included by probe.c when TLS is on).
 *
 * No library struct offsets: an SSL* is tied to its socket by the read/write syscall the
 * SSL call makes on the same thread (the syscall exit hook calls tls_nested_syscall while a
 * call of this thread is pending), and remembered in `ssl_fds`.  The connection is then
 * flagged `ssl`: its ciphertext syscalls are counted but never parsed, and its plaintext
 * enters the same path as syscall data (handle_bytes) with source SRC_SSL.
 *
 * Probe hits per call.  Where each probe sits is chosen in bpf/uprobe_sites.py so that the
 * kernel emulates the instruction it replaces (~0.45 us per hit here) instead of
 * single-stepping it (~16 us): see that file and bench/uprobe_cost.py.
 *   SSL_write / SSL_write_ex       uprobe at entry only (buffer and length are known there;
 *                                  sent at once when the fd is known, else at the nested
 *                                  write syscall).  Usually at ssl_write_internal, which
 *                                  both call with (SSL*, buf, size_t num, ...): the *_ex
 *                                  program serves both there
 *   SSL_read / SSL_read_ex         uprobe at entry + uretprobe (length known at return);
 *                                  usually at ssl_read_internal(SSL*, buf, size_t num,
 *                                  size_t *readbytes): ret > 0 -> *readbytes bytes, as
 *                                  SSL_read and SSL_read_ex themselves read it
 *   SSL_do_handshake               uprobe at entry (once per connection: learns the fd)
 *   Go crypto/tls (*Conn).Write    uprobe at entry (register ABI: RAX conn, RBX buf, RCX len)
 *   Go crypto/tls (*Conn).Read     uprobe at entry + a uprobe at the call of runtime.memmove
 *                                  that copies the plaintext into b (RAX b, RBX source,
 *                                  RCX n), or, where that call is not found, on each RET
 *                                  (no uretprobes in Go); keyed by goroutine (R14)
 *   Go entry probes sit on the stack check's `jbe morestack` (emulated) unless the
 *   instruction after it is emulated (push %rbp, Go >= 1.21); at the jbe the flags of the
 *   cmp are still there: CF or ZF set means the morestack path, which re-enters the
 *   function from the top, so that hit is skipped (*_jcc programs).
 * Go's fd comes from the *tls.Conn: conn (net.Conn iface, data word) -> *net.TCPConn ->
 * netFD -> poll.FD.Sysfd, at the offsets GO_* below (user space checks them against DWARF).
 */

#define DIR_NONE 2              /* a handshake: no data of its own */

#define GO_CONN_DATA_OFF 8      /* tls.Conn.conn (offset 0) + the interface's data word */
#define GO_NETFD_OFF 0          /* net.conn.fd */
#define GO_SYSFD_OFF 16         /* net.netFD.pfd (0) + poll.FD.Sysfd (16) */

struct ssl_key {
    u32 tgid;
    u32 pad;
    u64 ptr;                    /* SSL*, or a goroutine's g for Go reads */
};

struct ssl_call {
    u64 ssl;
    u64 buf;
    u64 len_ptr;                /* SSL_read_ex's size_t *readbytes, else 0 */
    u32 num;                    /* SSL_write's length */
    s32 fd;                     /* -1 until known */
    u8 dir;
    u8 pad[7];
};

/* LRU: a write whose socket never showed up, or a thread that died, leaves an entry */
BPF_TABLE("lru_hash", u64, struct ssl_call, ssl_calls, 16384);  /* by pid_tgid (thread) */
BPF_TABLE("lru_hash", struct ssl_key, s32, ssl_fds, 65536);  /* SSL* -> fd */
BPF_TABLE("lru_hash", struct ssl_key, struct ssl_call, go_reads, 16384);  /* by goroutine */

/* Plaintext of a TLS call on (tgid, fd). */
/* Ends in a tail call (handle_bytes): nothing after it runs; clean up before calling it. */
static __always_inline void tls_plaintext(void *ctx, u32 tgid, s32 fd, u64 buf, u32 len,
                                          u8 dir, int from_uprobe) {
    if (len == 0)
        return;
    struct conn_key k = {.tgid = tgid, .fd = fd};
    struct conn_val *c = conns.lookup(&k);
    if (!c)
        return;
    c->ssl = 1;
    struct active_op op = {};
    op.buf = buf;
    handle_bytes(ctx, c, &k, &op, len, dir, SRC_SSL, from_uprobe);
}

/* Called at every data syscall exit on a tracked connection. */
static __always_inline void tls_nested_syscall(void *ctx, u64 id, struct conn_val *c,
                                               struct conn_key *k, u8 dir) {
    struct ssl_call *call = ssl_calls.lookup(&id);
    if (!call)
        return;
    if (call->fd < 0) {
        call->fd = k->fd;
        struct ssl_key sk = {.tgid = k->tgid, .ptr = call->ssl};
        s32 fd = k->fd;
        ssl_fds.update(&sk, &fd);
    } else if (call->fd != k->fd) {
        return;
    }
    c->ssl = 1;
    if (call->dir == DIR_EGRESS && dir == DIR_EGRESS) {
        /* a write whose fd was unknown at SSL_write entry: send its plaintext now */
        u64 buf = call->buf;
        u32 num = call->num;
        ssl_calls.delete(&id);
        tls_plaintext(ctx, k->tgid, k->fd, buf, num, DIR_EGRESS, 0);   /* in a syscall hook */
    }
}

static __always_inline int tls_wanted(u64 id) {
    struct probe_config *cfg = get_config();
    return cfg && cfg->tls && pid_wanted(id >> 32, cfg);
}

/* `num`: SSL_write's int (upper half of the register undefined) or SSL_write_ex's size_t */
static __always_inline int ssl_write_common(struct pt_regs *ctx, s64 num) {
    u64 id = bpf_get_current_pid_tgid();
    if (!tls_wanted(id))
        return 0;
    u64 ssl = PT_REGS_PARM1(ctx);
    u64 buf = PT_REGS_PARM2(ctx);
    if (num <= 0 || num > 0x7fffffff)
        return 0;
    struct ssl_key sk = {.tgid = id >> 32, .ptr = ssl};
    s32 *fd = ssl_fds.lookup(&sk);
    if (fd) {
        tls_plaintext(ctx, id >> 32, *fd, buf, (u32)num, DIR_EGRESS, 1);
        return 0;
    }
    struct ssl_call call = {};
    call.ssl = ssl;
    call.buf = buf;
    call.num = (u32)num;
    call.fd = -1;
    call.dir = DIR_EGRESS;
    ssl_calls.update(&id, &call);
    return 0;
}

int ssl_write_entry(struct pt_regs *ctx) { return ssl_write_common(ctx, (int)PT_REGS_PARM3(ctx)); }
int ssl_write_ex_entry(struct pt_regs *ctx) {
    return ssl_write_common(ctx, (s64)PT_REGS_PARM3(ctx));
}

static __always_inline int ssl_read_common(struct pt_regs *ctx, u64 len_ptr) {
    u64 id = bpf_get_current_pid_tgid();
    if (!tls_wanted(id))
        return 0;
    struct ssl_call call = {};
    call.ssl = PT_REGS_PARM1(ctx);
    call.buf = PT_REGS_PARM2(ctx);
    call.len_ptr = len_ptr;
    call.dir = DIR_INGRESS;
    struct ssl_key sk = {.tgid = id >> 32, .ptr = call.ssl};
    s32 *fd = ssl_fds.lookup(&sk);
    call.fd = fd ? *fd : -1;
    ssl_calls.update(&id, &call);
    return 0;
}

int ssl_read_entry(struct pt_regs *ctx) { return ssl_read_common(ctx, 0); }

int ssl_handshake_entry(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    if (!tls_wanted(id))
        return 0;
    struct ssl_call call = {};
    call.ssl = PT_REGS_PARM1(ctx);
    call.fd = -1;
    call.dir = DIR_NONE;        /* learns the fd from the handshake's syscalls */
    ssl_calls.update(&id, &call);
    return 0;
}
int ssl_read_ex_entry(struct pt_regs *ctx) { return ssl_read_common(ctx, PT_REGS_PARM4(ctx)); }

int ssl_read_return(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    struct ssl_call *call = ssl_calls.lookup(&id);
    if (!call)
        return 0;
    if (call->dir != DIR_INGRESS)
        goto out;
    int ret = (int)PT_REGS_RC(ctx);     /* all return int: upper half undefined */
    u64 n = 0;
    if (call->len_ptr) {
        /* SSL_read_ex returns 1 on success; ssl_read_internal returns > 0 (1) and SSL_read
         * then returns *readbytes */
        if (ret <= 0 || bpf_probe_read_user(&n, sizeof(n), (void *)call->len_ptr) != 0)
            goto out;
    } else {
        if (ret <= 0)
            goto out;
        n = ret;
    }
    if (n > 0x7fffffff)
        goto out;
    if (call->fd < 0) {
        stat_add(STAT_TLS_NO_SOCKET, 1);     /* plaintext whose socket was never seen */
        goto out;
    }
    s32 fd = call->fd;
    u64 buf = call->buf;
    ssl_calls.delete(&id);          /* first: tls_plaintext ends in a tail call */
    tls_plaintext(ctx, id >> 32, fd, buf, (u32)n, DIR_INGRESS, 1);
    return 0;
out:
    ssl_calls.delete(&id);
    return 0;
}

/* ---------------------------------------------------------------- Go crypto/tls ------ */

static __always_inline s32 go_conn_fd(u64 tls_conn) {
    u64 p = 0;
    if (bpf_probe_read_user(&p, sizeof(p), (void *)(tls_conn + GO_CONN_DATA_OFF)) || !p)
        return -1;
    u64 netfd = 0;
    if (bpf_probe_read_user(&netfd, sizeof(netfd), (void *)(p + GO_NETFD_OFF)) || !netfd)
        return -1;
    s64 fd = -1;
    if (bpf_probe_read_user(&fd, sizeof(fd), (void *)(netfd + GO_SYSFD_OFF)))
        return -1;
    return fd >= 0 && fd < 0x7fffffff ? (s32)fd : -1;
}

#define X86_EFLAGS_CF_BIT 0x0001
#define X86_EFLAGS_ZF_BIT 0x0040

/* At the stack check's jbe: taken (CF or ZF) = morestack, then the function starts again */
static __always_inline int go_to_morestack(struct pt_regs *ctx) {
    return (ctx->flags & (X86_EFLAGS_CF_BIT | X86_EFLAGS_ZF_BIT)) != 0;
}

static __always_inline int go_tls_write_common(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    if (!tls_wanted(id))
        return 0;
    s64 len = (s64)ctx->cx;
    if (len <= 0 || len > 0x7fffffff)
        return 0;
    s32 fd = go_conn_fd(ctx->ax);
    if (fd < 0) {
        stat_add(STAT_TLS_NO_SOCKET, 1);
        return 0;
    }
    tls_plaintext(ctx, id >> 32, fd, ctx->bx, (u32)len, DIR_EGRESS, 1);
    return 0;
}

int go_tls_write(struct pt_regs *ctx) { return go_tls_write_common(ctx); }
int go_tls_write_jcc(struct pt_regs *ctx) {
    return go_to_morestack(ctx) ? 0 : go_tls_write_common(ctx);
}

static __always_inline int go_tls_read_common(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    if (!tls_wanted(id))
        return 0;
    struct ssl_key gk = {.tgid = id >> 32, .ptr = ctx->r14};
    struct ssl_call call = {};
    call.ssl = ctx->ax;
    call.buf = ctx->bx;
    call.fd = go_conn_fd(ctx->ax);
    call.dir = DIR_INGRESS;
    go_reads.update(&gk, &call);
    return 0;
}

int go_tls_read(struct pt_regs *ctx) { return go_tls_read_common(ctx); }
int go_tls_read_jcc(struct pt_regs *ctx) {
    return go_to_morestack(ctx) ? 0 : go_tls_read_common(ctx);
}

/* The end of a goroutine's pending Read: n bytes of plaintext.  At a RET (RAX = n) they are
 * in b; at Read's `call runtime.memmove(to=RAX, from=RBX, n=RCX)` of copy(b, c.input...)
 * they are read from the source, since the copy has not run yet, and only the copy into
 * this Read's own b counts (to == b's pointer). */
static __always_inline int go_read_done(struct pt_regs *ctx, int at_copy) {
    u64 id = bpf_get_current_pid_tgid();
    struct ssl_key gk = {.tgid = id >> 32, .ptr = ctx->r14};
    struct ssl_call *call = go_reads.lookup(&gk);
    if (!call)
        return 0;
    s64 n = at_copy ? (s64)ctx->cx : (s64)ctx->ax;
    u64 src = at_copy ? ctx->bx : call->buf;
    int ok = (!at_copy || ctx->ax == call->buf) && n > 0 && n <= 0x7fffffff && call->fd >= 0;
    s32 fd = call->fd;
    go_reads.delete(&gk);           /* first: tls_plaintext ends in a tail call */
    if (ok)
        tls_plaintext(ctx, id >> 32, fd, src, (u32)n, DIR_INGRESS, 1);
    return 0;
}

int go_tls_read_ret(struct pt_regs *ctx) { return go_read_done(ctx, 0); }
int go_tls_read_copy(struct pt_regs *ctx) { return go_read_done(ctx, 1); }

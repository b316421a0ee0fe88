/* The sockmap relay's BPF objects, built with the raw bpf(2) syscall: no libbpf, no clang. */
#include <linux/bpf.h>
#include <sys/syscall.h>
#include <stddef.h>

#define INSN(c, d, s, o, i) ((struct bpf_insn){.code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i)})
#define MOV64_REG(d, s) INSN(BPF_ALU64 | BPF_MOV | BPF_X, d, s, 0, 0)
#define MOV64_IMM(d, i) INSN(BPF_ALU64 | BPF_MOV | BPF_K, d, 0, 0, i)
#define ADD64_IMM(d, i) INSN(BPF_ALU64 | BPF_ADD | BPF_K, d, 0, 0, i)
#define STX_DW(d, s, o) INSN(BPF_STX | BPF_MEM | BPF_DW, d, s, o, 0)
#define LDX_W(d, s, o) INSN(BPF_LDX | BPF_MEM | BPF_W, d, s, o, 0)
#define LD_MAP_FD(d, fd) INSN(BPF_LD | BPF_DW | BPF_IMM, d, BPF_PSEUDO_MAP_FD, 0, fd), INSN(0, 0, 0, 0, 0)
#define JEQ_IMM(d, i, o) INSN(BPF_JMP | BPF_JEQ | BPF_K, d, 0, o, i)
#define CALL(f) INSN(BPF_JMP | BPF_CALL, 0, 0, 0, f)
#define EXIT() INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)

static inline long sys_bpf(int cmd, union bpf_attr *a)
{
    return syscall(__NR_bpf, cmd, a, sizeof(*a));
}

static char bpf_log[65536];

static inline int prog_load(const struct bpf_insn *insns, unsigned n, unsigned attach_type)
{
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.prog_type = BPF_PROG_TYPE_SK_SKB;
    a.expected_attach_type = attach_type;
    a.insns = (uintptr_t)insns;
    a.insn_cnt = n;
    a.license = (uintptr_t)"GPL";
    a.log_buf = (uintptr_t)bpf_log;
    a.log_size = sizeof(bpf_log);
    a.log_level = 1;
    int fd = sys_bpf(BPF_PROG_LOAD, &a);
    if (fd < 0)
        fprintf(stderr, "verifier log:\n%s\n", bpf_log);
    return fd;
}

/* A SOCKHASH keyed by a 64-bit socket cookie (SO_COOKIE). */
static inline int sockhash_create(unsigned max)
{
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.map_type = BPF_MAP_TYPE_SOCKHASH;
    a.key_size = 8;
    a.value_size = 8; /* u64 fd on update; lookup would return the cookie */
    a.max_entries = max;
    return sys_bpf(BPF_MAP_CREATE, &a);
}

static inline int map_put_sock(int map, uint64_t key, int sockfd)
{
    union bpf_attr a;
    uint64_t v = (uint64_t)sockfd;
    memset(&a, 0, sizeof(a));
    a.map_fd = map;
    a.key = (uintptr_t)&key;
    a.value = (uintptr_t)&v;
    a.flags = BPF_NOEXIST;
    return sys_bpf(BPF_MAP_UPDATE_ELEM, &a);
}

static inline int map_del(int map, uint64_t key)
{
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.map_fd = map;
    a.key = (uintptr_t)&key;
    return sys_bpf(BPF_MAP_DELETE_ELEM, &a);
}

static inline int prog_attach(int prog, int map, unsigned type)
{
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.target_fd = map;
    a.attach_bpf_fd = prog;
    a.attach_type = type;
    return sys_bpf(BPF_PROG_ATTACH, &a);
}

/*
 * Verdict: look the receiving socket's cookie up in the redirect map (whose entry there is the
 * peer socket) and send the skb out of the peer (egress redirect). Always SK_PASS: with a
 * redirect set that means "redirect"; when the lookup failed (no peer) the data stays on this
 * socket's own receive side instead of being dropped.
 */
static inline int load_verdict(int redir_map, unsigned attach_type, unsigned *ninsn, int fin_check, int rflags)
{
    const struct bpf_insn prog[] = {
        MOV64_REG(BPF_REG_6, BPF_REG_1),            /* r6 = skb */
        LDX_W(BPF_REG_0, BPF_REG_1, offsetof(struct __sk_buff, len)),
        JEQ_IMM(BPF_REG_0, 0, 10),                  /* empty skb (a bare FIN): r0 = 0 = SK_DROP */
        CALL(BPF_FUNC_get_socket_cookie),           /* r0 = cookie(skb->sk) */
        STX_DW(BPF_REG_10, BPF_REG_0, -8),          /* *(u64 *)(fp - 8) = r0 */
        MOV64_REG(BPF_REG_1, BPF_REG_6),            /* r1 = skb */
        LD_MAP_FD(BPF_REG_2, redir_map),            /* r2 = &redir map (2 slots) */
        MOV64_REG(BPF_REG_3, BPF_REG_10),
        ADD64_IMM(BPF_REG_3, -8),                   /* r3 = &key */
        MOV64_IMM(BPF_REG_4, rflags),               /* r4 = flags: 0 = egress of the peer */
        CALL(BPF_FUNC_sk_redirect_hash),
        MOV64_IMM(BPF_REG_0, SK_PASS),              /* r0 = SK_PASS */
        EXIT(),
    };
    *ninsn = sizeof(prog) / sizeof(prog[0]);
    if (!fin_check) { /* the naive program: without the two length-check instructions (1, 2) */
        struct bpf_insn naive[16];
        naive[0] = prog[0];
        memcpy(naive + 1, prog + 3, (*ninsn - 3) * sizeof(prog[0]));
        *ninsn -= 2;
        return prog_load(naive, *ninsn, attach_type);
    }
    return prog_load(prog, *ninsn, attach_type);
}

/* Parser for the strparser variant: every skb is one whole "message". */
static inline int load_parser(unsigned *ninsn)
{
    const struct bpf_insn prog[] = {
        LDX_W(BPF_REG_0, BPF_REG_1, offsetof(struct __sk_buff, len)),
        EXIT(),
    };
    *ninsn = 2;
    return prog_load(prog, 2, BPF_SK_SKB_STREAM_PARSER);
}

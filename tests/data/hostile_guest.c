/*
 * A hostile guest "kernel" for husk's end-to-end tests (e2e_faults): a
 * freestanding x86_64 ELF the VMM loads in place of Linux. It does what a
 * guest kernel an attacker controls could do to the VMM's devices, then
 * prints "HOSTILE DONE devices N" on the serial port and asks the i8042 for a reset.
 *
 * - every virtio-mmio device found at 0xd0000000 + n * 0x1000: wild
 *   features, queue sizes that are too big or not powers of two, rings
 *   outside guest RAM, then rings in RAM with descriptor chains that loop,
 *   point outside RAM, claim 4 GiB lengths, nest indirect tables, and
 *   available-ring indices far ahead; buffers of 0xff, of zeros, and
 *   vsock and FUSE headers with huge lengths and unknown operations;
 *   config-space and register accesses of every width, resets midway;
 * - reads and writes of MMIO nothing claims, and of most I/O ports;
 * - 64 KiB of console output in one burst.
 *
 * Built by the test with gcc (tests/common/mod.rs: hostile_kernel), linked
 * by hostile_guest.ld at 1 MiB, where the VMM loads a kernel.
 */

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

#define MMIO_BASE 0xd0000000UL
#define MMIO_SLOTS 32
#define MAGIC 0x74726976u /* "virt" */
#define PDPT 0xa000UL     /* the VMM's boot page tables (layout.rs) */

u8 stack[65536] __attribute__((aligned(16), used));
static u64 pd[512] __attribute__((aligned(4096)));

struct desc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
};
#define QSIZE 256
static struct desc descs[QSIZE] __attribute__((aligned(4096)));
static struct {
	u16 flags, idx, ring[QSIZE], used_event;
} avail __attribute__((aligned(4096)));
static struct {
	u16 flags, idx;
	struct {
		u32 id, len;
	} ring[QSIZE];
	u16 avail_event;
} used __attribute__((aligned(4096)));
static u8 buf[8192] __attribute__((aligned(4096)));
static struct desc indirect[16] __attribute__((aligned(4096)));

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline u8 inb(u16 port)
{
	u8 v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
static inline u32 inl(u16 port)
{
	u32 v;
	__asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline void w8(u64 a, u8 v) { *(volatile u8 *)a = v; }
static inline void w16(u64 a, u16 v) { *(volatile u16 *)a = v; }
static inline void w32(u64 a, u32 v) { *(volatile u32 *)a = v; }
static inline void w64(u64 a, u64 v) { *(volatile u64 *)a = v; }
static inline u8 r8(u64 a) { return *(volatile u8 *)a; }
static inline u32 r32(u64 a) { return *(volatile u32 *)a; }
static inline u64 r64(u64 a) { return *(volatile u64 *)a; }

static void putc_(char c) { outb(0x3f8, (u8)c); }
static void puts_(const char *s)
{
	while (*s)
		putc_(*s++);
}
static void puthex(u64 v)
{
	const char *d = "0123456789abcdef";
	for (int i = 60; i >= 0; i -= 4)
		putc_(d[(v >> i) & 0xf]);
}

/* virtio-mmio registers */
enum {
	DEV_FEAT = 0x10, DEV_FEAT_SEL = 0x14, DRV_FEAT = 0x20, DRV_FEAT_SEL = 0x24,
	Q_SEL = 0x30, Q_NUM_MAX = 0x34, Q_NUM = 0x38, Q_READY = 0x44, Q_NOTIFY = 0x50,
	INT_STATUS = 0x60, INT_ACK = 0x64, STATUS = 0x70,
	Q_DESC_LO = 0x80, Q_DESC_HI = 0x84, Q_AVAIL_LO = 0x90, Q_AVAIL_HI = 0x94,
	Q_USED_LO = 0xa0, Q_USED_HI = 0xa4, CONFIG = 0x100,
};
enum { ACK = 1, DRIVER = 2, DRIVER_OK = 4, FEATURES_OK = 8 };
enum { F_NEXT = 1, F_WRITE = 2, F_INDIRECT = 4 };

static void set_addr(u64 base, u32 lo, u64 a)
{
	w32(base + lo, (u32)a);
	w32(base + lo + 4, (u32)(a >> 32));
}

static void negotiate(u64 base)
{
	w32(base + STATUS, 0);
	w32(base + STATUS, ACK);
	w32(base + STATUS, ACK | DRIVER);
	for (u32 sel = 0; sel < 4; sel++) {
		w32(base + DEV_FEAT_SEL, sel);
		(void)r32(base + DEV_FEAT);
		w32(base + DRV_FEAT_SEL, sel);
		w32(base + DRV_FEAT, 0xffffffffu);
	}
	w32(base + STATUS, ACK | DRIVER | FEATURES_OK);
}

static void queue(u64 base, u32 q, u32 num, u64 d, u64 a, u64 u)
{
	w32(base + Q_SEL, q);
	w32(base + Q_NUM, num);
	set_addr(base, Q_DESC_LO, d);
	set_addr(base, Q_AVAIL_LO, a);
	set_addr(base, Q_USED_LO, u);
	w32(base + Q_READY, 1);
}

static void fill(int kind)
{
	for (int i = 0; i < (int)sizeof(buf); i++)
		buf[i] = kind == 0 ? 0xff : 0;
	if (kind == 2) {
		/* a vsock header: cid 3 -> 2, port 1234 -> 1024, stream, an op
		 * cycling through every value, 4 GiB - 1 of payload */
		w64((u64)buf + 0, 3);
		w64((u64)buf + 8, 2);
		w32((u64)buf + 16, 1234);
		w32((u64)buf + 20, 1024);
		w32((u64)buf + 24, 0xffffffffu);
		w16((u64)buf + 28, 1);
	}
	if (kind == 3) {
		/* a FUSE request header: 4 GiB - 1 long, unknown opcode,
		 * node id 1 */
		w32((u64)buf + 0, 0xffffffffu);
		w32((u64)buf + 4, 0x7fffffffu);
		w64((u64)buf + 8, 1);
		w64((u64)buf + 16, 1);
	}
	if (kind == 4) {
		/* a FUSE request header claiming less than its own size */
		w32((u64)buf + 0, 8);
		w32((u64)buf + 4, 26); /* INIT */
	}
}

static void hostile_chains(u64 base, u32 q, u32 num, int kind, u16 op)
{
	fill(kind);
	if (kind == 2)
		w16((u64)buf + 30, op);
	for (int i = 0; i < QSIZE; i++) {
		descs[i].addr = (u64)buf;
		descs[i].len = 64;
		descs[i].flags = 0;
		descs[i].next = 0;
	}
	/* 0: loops on itself */
	descs[0] = (struct desc){0x7ffffffff000UL, 0xffffffffu, F_NEXT, 0};
	/* 1 -> 2 -> 1: a two-element loop, writable, 4 GiB long */
	descs[1] = (struct desc){(u64)buf, 0xffffffffu, F_NEXT | F_WRITE, 2};
	descs[2] = (struct desc){(u64)buf, 0xffffffffu, F_NEXT | F_WRITE, 1};
	/* 3: an indirect table that points at itself and outside RAM */
	for (int i = 0; i < 16; i++)
		indirect[i] = (struct desc){0xfffffffffffff000UL, 4096, F_NEXT | F_INDIRECT, (u16)(i + 1)};
	indirect[15].next = 0;
	descs[3] = (struct desc){(u64)indirect, sizeof(indirect), F_INDIRECT, 0};
	/* 4: an indirect table outside RAM, and one of 2^32 - 16 bytes */
	descs[4] = (struct desc){0x1000000000UL, 4096, F_INDIRECT, 0};
	descs[5] = (struct desc){(u64)indirect, 0xfffffff0u, F_INDIRECT, 0};
	/* 6 -> 7: a plausible request (header, then a writable buffer) */
	descs[6] = (struct desc){(u64)buf, 64, F_NEXT, 7};
	descs[7] = (struct desc){(u64)buf + 4096, 4096, F_WRITE, 0};
	/* 8: next out of the table */
	descs[8] = (struct desc){(u64)buf, 64, F_NEXT, 0xffff};
	/* 9: a buffer crossing the end of RAM, 10: zero length */
	descs[9] = (struct desc){0x3ffff000UL, 0x10000, F_WRITE, 0};
	descs[10] = (struct desc){(u64)buf, 0, 0, 0};
	/* 11: a buffer over the device's own MMIO window */
	descs[11] = (struct desc){base, 4096, F_WRITE, 0};
	/* 12: an address that wraps around */
	descs[12] = (struct desc){0xfffffffffffffff0UL, 0x100, 0, 0};

	u16 heads[] = {0, 1, 3, 4, 5, 6, 8, 9, 10, 11, 12, 0xffff, 300, 6};
	avail.flags = 0;
	for (int i = 0; i < QSIZE; i++)
		avail.ring[i] = heads[i % (sizeof(heads) / sizeof(heads[0]))];
	used.idx = 0;
	queue(base, q, num, (u64)descs, (u64)&avail, (u64)&used);
	w32(base + STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
	u16 idx = 0;
	for (int round = 0; round < 4; round++) {
		idx += sizeof(heads) / sizeof(heads[0]);
		avail.idx = idx;
		w32(base + Q_NOTIFY, q);
	}
	/* the index far ahead of what was there */
	avail.idx = (u16)(idx + 40000);
	w32(base + Q_NOTIFY, q);
	/* notifications of queues that do not exist */
	w32(base + Q_NOTIFY, 0xffffffffu);
	w32(base + Q_NOTIFY, 1000);
	w32(base + INT_ACK, 0xffffffffu);
}

static void attack(u64 base)
{
	u32 id = r32(base + 8);
	puts_("device ");
	puthex(id);
	puts_("\n");

	/* Register space: every offset, every width, before and after a
	 * reset. */
	for (u64 off = 0; off < 0x1000; off += 4)
		(void)r32(base + off);
	for (u64 off = 0; off < 0x100; off += 1)
		(void)r8(base + off);
	(void)r64(base + 0x100);

	/* Wild queues before any negotiation, then after. */
	for (int pass = 0; pass < 2; pass++) {
		if (pass)
			negotiate(base);
		for (u32 q = 0; q < 4; q++) {
			w32(base + Q_SEL, q);
			u32 max = r32(base + Q_NUM_MAX);
			u32 sizes[] = {0xffff, max + 1, 3, 0, max};
			for (int s = 0; s < 5; s++) {
				queue(base, q, sizes[s], 0xfffffffffffff000UL, 0xfffffffffffff000UL,
				      0xfffffffffffff000UL);
				w32(base + Q_NOTIFY, q);
			}
			/* rings that overlap each other and the MMIO window */
			queue(base, q, max, base, base, base);
			w32(base + Q_NOTIFY, q);
		}
		w32(base + STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
		for (u32 q = 0; q < 4; q++)
			w32(base + Q_NOTIFY, q);
		w32(base + STATUS, 0xff);
	}

	/* Rings in RAM, hostile chains, several kinds of buffer. */
	for (int kind = 0; kind < 5; kind++) {
		for (u32 q = 0; q < 3; q++) {
			for (u16 op = 0; op < (kind == 2 ? 9 : 1); op++) {
				negotiate(base);
				w32(base + Q_SEL, q);
				u32 max = r32(base + Q_NUM_MAX);
				if (max == 0)
					continue;
				u32 num = max < QSIZE ? max : QSIZE;
				hostile_chains(base, q, num, kind, op);
				/* config space writes while running */
				for (u64 off = 0; off < 0x100; off += 4)
					w32(base + CONFIG + off, 0xffffffffu);
				for (u64 off = 0; off < 0x100; off += 1)
					w8(base + CONFIG + off, 0);
				/* a reset in the middle of it */
				w32(base + STATUS, 0);
			}
		}
	}
	/* A queue reconfigured while the device runs. */
	negotiate(base);
	hostile_chains(base, 0, 8, 0, 0);
	queue(base, 0, 16, 0x1000, 0x2000, 0x3000);
	w32(base + Q_NOTIFY, 0);
	w16(base + Q_NOTIFY, 0);
	w8(base + STATUS, 0);
}

__attribute__((used)) void main_(void)
{
	puts_("HOSTILE START\n");
	/* Map the MMIO gap (3-4 GiB) with 2 MiB uncached pages: the VMM's
	 * boot page tables map only the first 1 GiB. */
	for (u64 i = 0; i < 512; i++)
		pd[i] = (0xc0000000UL + (i << 21)) | 0x9b;
	w64(PDPT + 3 * 8, (u64)pd | 3);
	u64 cr3;
	__asm__ volatile("mov %%cr3, %0; mov %0, %%cr3" : "=r"(cr3)::"memory");

	int found = 0;
	for (u64 n = 0; n < MMIO_SLOTS; n++) {
		u64 base = MMIO_BASE + n * 0x1000;
		if (r32(base) != MAGIC)
			continue;
		found++;
		attack(base);
	}
	puts_("devices attacked: ");
	puthex((u64)found);
	puts_("\n");

	/* MMIO nothing claims: the rest of the gap, the APIC windows. */
	u64 stray[] = {0xc0000000UL, 0xcffff000UL, 0xd0100000UL, 0xe0000000UL,
		       0xfebff000UL, 0xfed00000UL, 0xfffff000UL};
	for (unsigned i = 0; i < sizeof(stray) / sizeof(stray[0]); i++) {
		(void)r32(stray[i]);
		w32(stray[i], 0xdeadbeef);
		w64(stray[i] + 8, ~0UL);
	}
	/* I/O ports, but the serial port, the i8042 and the exit port. */
	for (u32 p = 0; p < 0x1000; p++) {
		if ((p >= 0x3f8 && p < 0x400) || (p >= 0x60 && p < 0x65) || (p >= 0xf4 && p < 0xf8))
			continue;
		(void)inb((u16)p);
		outb((u16)p, 0xff);
		if ((p & 3) == 0 && p < 0xf0) {
			outw((u16)p, 0xffff);
			outl((u16)p, 0xffffffffu);
			(void)inl((u16)p);
		}
	}
	/* Time for the device threads to take up every notification (each
	 * read is an exit to the VMM, which still answers). */
	for (int i = 0; i < 50000; i++) {
		if (r32(MMIO_BASE) != MAGIC) {
			puts_("HOSTILE the VMM stopped answering\n");
			break;
		}
	}
	/* A console burst. */
	for (int line = 0; line < 1024; line++)
		puts_("flood flood flood flood flood flood flood flood flood flood!!\n");
	puts_("HOSTILE DONE devices ");
	puthex((u64)found);
	puts_("\n");
	outb(0x64, 0xfe);
	for (;;)
		__asm__ volatile("hlt");
}

__attribute__((section(".text.start"), naked)) void _start(void)
{
	__asm__ volatile("lea stack+65536(%rip), %rsp\n"
			 "call main_\n"
			 "1: hlt\n"
			 "jmp 1b\n");
}

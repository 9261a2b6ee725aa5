/* The seccomp probe of the end-to-end suites: the process's seccomp mode
 * and what a few system calls answer, one line each, so that the same
 * probe under husk and under runc can be compared line for line.
 * Built static by the tests (gcc -static), run inside containers. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static void show(const char *what, long rc)
{
	if (rc < 0)
		printf("%s: %s\n", what, strerror(errno));
	else
		printf("%s: ok\n", what);
}

int main(void)
{
	char line[256];
	FILE *status = fopen("/proc/self/status", "r");

	while (status && fgets(line, sizeof line, status))
		if (strncmp(line, "Seccomp:", 8) == 0)
			fputs(line, stdout);
	/* Not in podman's and docker's default profiles: ENOSYS there. */
	show("add_key", syscall(SYS_add_key, "user", "husk-probe", "x", 1L,
				-2L /* KEY_SPEC_PROCESS_KEYRING */));
	/* personality is allowed for a few exact values only. */
	show("personality(ADDR_NO_RANDOMIZE)", syscall(SYS_personality, 0x0040000L));
	show("personality(query)", syscall(SYS_personality, 0xffffffffL));
	fflush(stdout);
	return 0;
}

/* Print the CLOCK_REALTIME time at which this process reached main(), in
 * nanoseconds since the epoch.  The benchmark runs it as a job to learn when
 * the job's process started.  Built static, it starts in well under a
 * millisecond, so the stamp falls right after the exec. */
#include <stdio.h>
#include <time.h>

int main(void)
{
    struct timespec now;

    if (clock_gettime(CLOCK_REALTIME, &now) != 0)
        return 1;
    printf("%lld\n", (long long)now.tv_sec * 1000000000LL + now.tv_nsec);
    return 0;
}

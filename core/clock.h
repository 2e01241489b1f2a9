/* Clocks: monotonic for durations and rates, wall for timestamps stored in the database. */
#ifndef CDCD_CLOCK_H
#define CDCD_CLOCK_H

#include <stdint.h>

uint64_t cdcd_now_ns(void);      /* CLOCK_MONOTONIC, nanoseconds */
double cdcd_now_s(void);         /* CLOCK_MONOTONIC, seconds */
double cdcd_wall_s(void);        /* CLOCK_REALTIME, seconds since the epoch */
void cdcd_sleep_ms(unsigned ms);

#endif

/* The run state machine (daemon/run_state.c): every edge of the diagram in run_state.h
 * leads where the diagram says, and every other (state, event) pair is refused. */
#include "run_state.h"
#include "test.h"

enum { Q = CDCDD_RUN_QUEUED, R = CDCDD_RUN_RUNNING, P = CDCDD_RUN_PAUSED, S = CDCDD_RUN_STOPPED,
       F = CDCDD_RUN_FINISHED, E = CDCDD_RUN_FAILED };

/* The diagram, written out edge by edge (independently of the table in run_state.c). */
static const struct {
    int from, ev, to;
} edges[] = {
    {Q, CDCDD_RUN_EV_START, R},  {Q, CDCDD_RUN_EV_PAUSE, P},   {Q, CDCDD_RUN_EV_STOP, S},
    {Q, CDCDD_RUN_EV_FAIL, E},   {R, CDCDD_RUN_EV_FINISH, F},  {R, CDCDD_RUN_EV_FAIL, E},
    {R, CDCDD_RUN_EV_PAUSE, P},  {R, CDCDD_RUN_EV_STOP, S},    {R, CDCDD_RUN_EV_REQUEUE, Q},
    {P, CDCDD_RUN_EV_RESUME, Q}, {P, CDCDD_RUN_EV_STOP, S},    {S, CDCDD_RUN_EV_RESUME, Q},
    {E, CDCDD_RUN_EV_RESUME, Q},
};
#define N_EDGES ((int)(sizeof edges / sizeof edges[0]))

TEST(test_run_state_every_edge) {
    for (int i = 0; i < N_EDGES; i++) {
        int got = cdcdd_run_next_state((cdcdd_run_state)edges[i].from, (cdcdd_run_event)edges[i].ev);
        EXPECTF(got == edges[i].to, "%s --%s--> %s, expected %s", cdcdd_run_state_name((cdcdd_run_state)edges[i].from),
                cdcdd_run_event_name((cdcdd_run_event)edges[i].ev),
                got < 0 ? "(refused)" : cdcdd_run_state_name((cdcdd_run_state)got),
                cdcdd_run_state_name((cdcdd_run_state)edges[i].to));
    }
}

TEST(test_run_state_illegal_edges_refused) {
    int refused = 0;
    for (int s = 0; s < CDCDD_RUN_STATE_COUNT; s++)
        for (int ev = 0; ev < CDCDD_RUN_EVENT_COUNT; ev++) {
            int legal = 0;
            for (int i = 0; i < N_EDGES; i++) legal |= edges[i].from == s && edges[i].ev == ev;
            if (legal) continue;
            int got = cdcdd_run_next_state((cdcdd_run_state)s, (cdcdd_run_event)ev);
            EXPECTF(got == -1, "%s --%s--> %s should be refused", cdcdd_run_state_name((cdcdd_run_state)s),
                    cdcdd_run_event_name((cdcdd_run_event)ev), cdcdd_run_state_name((cdcdd_run_state)got));
            refused++;
        }
    EXPECT(refused == CDCDD_RUN_STATE_COUNT * CDCDD_RUN_EVENT_COUNT - N_EDGES);
    /* finished is terminal; a resumed run never skips the queue */
    for (int ev = 0; ev < CDCDD_RUN_EVENT_COUNT; ev++) EXPECT(cdcdd_run_next_state((cdcdd_run_state)F, (cdcdd_run_event)ev) == -1);
    EXPECT(cdcdd_run_next_state((cdcdd_run_state)P, CDCDD_RUN_EV_START) == -1);
    /* out of range */
    EXPECT(cdcdd_run_next_state((cdcdd_run_state)CDCDD_RUN_STATE_COUNT, CDCDD_RUN_EV_START) == -1);
    EXPECT(cdcdd_run_next_state((cdcdd_run_state)Q, (cdcdd_run_event)CDCDD_RUN_EVENT_COUNT) == -1);
    EXPECT(cdcdd_run_next_state((cdcdd_run_state)-1, CDCDD_RUN_EV_START) == -1);
}

TEST(test_run_state_names) {
    for (int s = 0; s < CDCDD_RUN_STATE_COUNT; s++)
        EXPECT(cdcdd_run_state_parse(cdcdd_run_state_name((cdcdd_run_state)s)) == s);
    EXPECT_STREQ(cdcdd_run_state_name(CDCDD_RUN_PAUSED), "paused");
    EXPECT(cdcdd_run_state_parse("Paused") == -1);
    EXPECT(cdcdd_run_state_parse("") == -1);
    EXPECT(cdcdd_run_state_parse(NULL) == -1);
    EXPECT_STREQ(cdcdd_run_state_name((cdcdd_run_state)99), "unknown");
    EXPECT_STREQ(cdcdd_run_event_name(CDCDD_RUN_EV_REQUEUE), "requeue");
}

int main(void) {
    RUN(test_run_state_every_edge);
    RUN(test_run_state_illegal_edges_refused);
    RUN(test_run_state_names);
    return test_summary();
}

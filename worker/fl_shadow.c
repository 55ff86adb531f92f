/*
 * fl_shadow.c - what the ingest consumer and the API share about the
 * shadow besides its layout (fl_shadow.h): publishing a desired delta.
 */
#include <stdio.h>
#include <string.h>

#include "fl_log.h"
#include "fl_mqtt.h"
#include "fl_shadow.h"

void fl_shadow_publish_delta(const char *device, const char *delta, size_t len)
{
    char topic[128];

    snprintf(topic, sizeof(topic), "devices/%s/desired", device);
    /* an empty delta clears the retained message: an empty payload */
    if (strcmp(delta, "{}") == 0)
        len = 0;
    if (fl_mqtt_publish_ex(topic, delta, len, 1, 1, 0, NULL, NULL) != FL_OK)
        fl_warn("desired delta of %s not published (mqtt not connected); "
                "it is published with the next change",
                device);
}

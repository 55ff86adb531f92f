/*
 * fl_mqttc.h - the native MQTT 5 intake client: plain TCP brokers, on the
 * worker's libevent loop (see fl_mqttc.c). fl_mqtt.c's module calls these
 * when mqtt.uri is tcp:// or mqtt://; the interface of the intake stays
 * fl_mqtt.h.
 */
#ifndef FL_MQTTC_H
#define FL_MQTTC_H

#include <stddef.h>
#include <stdint.h>

#include "fl_mqtt.h"
#include "fl_worker.h"

int  fl_mqttc_init(fl_worker_t *w);
void fl_mqttc_stop(fl_worker_t *w, int fast);
int  fl_mqttc_busy(fl_worker_t *w);
void fl_mqttc_destroy(fl_worker_t *w);

/* fl_mqtt_publish_ex() on the native connection; arguments checked by
 * the caller. Any thread. */
int fl_mqttc_publish(const char *topic, const void *payload, size_t len,
                     int qos, int retain, uint32_t expiry_s, fl_mqtt_pub_cb cb,
                     void *ud);

#endif

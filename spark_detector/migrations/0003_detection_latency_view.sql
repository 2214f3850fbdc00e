-- Detection latency (SPEC section 7): from the chunk's S3 event to the detection's commit.
CREATE VIEW detection_latency AS
SELECT d.seq,
       d.pattern_id,
       d.chunk_key,
       p.apply_order,
       p.event_time,
       d.detected_at,
       1000 * extract(epoch FROM d.detected_at - p.event_time) AS latency_ms
FROM detected_patterns d
JOIN processed_chunks p ON p.chunk_key = d.chunk_key;

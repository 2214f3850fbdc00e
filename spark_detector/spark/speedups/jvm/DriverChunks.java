package spark_detector.jvm;

import java.util.ArrayList;
import java.util.Collections;
import java.util.EnumSet;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;

import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.catalyst.expressions.GenericInternalRow;
import org.apache.spark.sql.connector.catalog.SupportsRead;
import org.apache.spark.sql.connector.catalog.Table;
import org.apache.spark.sql.connector.catalog.TableCapability;
import org.apache.spark.sql.connector.catalog.TableProvider;
import org.apache.spark.sql.connector.expressions.Transform;
import org.apache.spark.sql.connector.read.Batch;
import org.apache.spark.sql.connector.read.InputPartition;
import org.apache.spark.sql.connector.read.PartitionReader;
import org.apache.spark.sql.connector.read.PartitionReaderFactory;
import org.apache.spark.sql.connector.read.Scan;
import org.apache.spark.sql.connector.read.ScanBuilder;
import org.apache.spark.sql.types.StructType;
import org.apache.spark.sql.util.CaseInsensitiveStringMap;
import org.apache.spark.unsafe.types.UTF8String;

/**
 * The chunks of the running batch, put here by the Python driver just before each job (Spark
 * in local mode, where the executors share the driver's JVM): spark_detector/driver_chunks.py.
 *
 * A query over this source is planned once and run again for every batch: each run reads
 * what the driver put in at that moment. A DataFrame made from each batch's data instead
 * costs Spark a new analysis, optimisation, plan and generated code per job, most of a
 * one-chunk job's time. Partition i returns the rows put in slot i. Rows follow the worker's
 * FETCHED_SCHEMA (spark_detector/chunk_fetch.py), which the driver passes as the schema.
 *
 * Compiled with Janino, which Spark ships, so that a Java runtime is enough: it reads Java
 * without lambdas and ignores type arguments, hence the raw types and Object returns (their
 * erasures are the interfaces' methods).
 */
public class DriverChunks implements TableProvider {
  private static final Map SLOTS = new ConcurrentHashMap();

  /** Adds a chunk's row to slot {@code slot}. */
  public static void put(int slot, String key, String status, String reason, int nLines,
                         Integer nColumns, Integer customer, Integer merchant, Integer category,
                         Integer gender, Integer amount, String body) {
    Object[] values = {utf8(key), utf8(status), utf8(reason), Integer.valueOf(nLines), nColumns,
                       customer, merchant, category, gender, amount, utf8(body)};
    List rows = (List) SLOTS.get(Integer.valueOf(slot));
    if (rows == null) {
      rows = Collections.synchronizedList(new ArrayList());
      SLOTS.put(Integer.valueOf(slot), rows);
    }
    rows.add(new GenericInternalRow(values));
  }

  /** Drops every slot's rows: called after each job, so that no chunk outlives its batch. */
  public static void clear() {
    SLOTS.clear();
  }

  private static UTF8String utf8(String value) {
    return value == null ? null : UTF8String.fromString(value);
  }

  /** The driver gives the schema: FETCHED_SCHEMA, in the order of put's arguments. */
  public boolean supportsExternalMetadata() {
    return true;
  }

  public StructType inferSchema(CaseInsensitiveStringMap options) {
    throw new UnsupportedOperationException("read with .schema(FETCHED_SCHEMA)");
  }

  public Table getTable(StructType schema, Transform[] partitioning, Map properties) {
    String slots = (String) properties.get("slots");
    return new Chunks(schema, slots == null ? 1 : Integer.parseInt(slots));
  }

  /** The table: its scan has one partition per slot. */
  static final class Chunks implements Table, SupportsRead, ScanBuilder, Scan, Batch {
    private final StructType schema;
    private final int slots;

    Chunks(StructType schema, int slots) {
      this.schema = schema;
      this.slots = slots;
    }

    public String name() {
      return "driver_chunks";
    }

    public StructType schema() {
      return schema;
    }

    public Set capabilities() {
      return EnumSet.of(TableCapability.BATCH_READ);
    }

    public ScanBuilder newScanBuilder(CaseInsensitiveStringMap options) {
      return this;
    }

    public Scan build() {
      return this;
    }

    public StructType readSchema() {
      return schema;
    }

    public Batch toBatch() {
      return this;
    }

    public InputPartition[] planInputPartitions() {
      InputPartition[] partitions = new InputPartition[slots];
      for (int slot = 0; slot < slots; slot++) {
        partitions[slot] = new Slot(slot);
      }
      return partitions;
    }

    public PartitionReaderFactory createReaderFactory() {
      return new Readers();
    }
  }

  static final class Slot implements InputPartition {
    final int slot;

    Slot(int slot) {
      this.slot = slot;
    }
  }

  static final class Readers implements PartitionReaderFactory {
    public PartitionReader createReader(InputPartition partition) {
      List rows = (List) SLOTS.get(Integer.valueOf(((Slot) partition).slot));
      return new Reader(rows == null ? new ArrayList() : new ArrayList(rows));
    }
  }

  static final class Reader implements PartitionReader {
    private final Iterator rows;
    private Object current;

    Reader(List rows) {
      this.rows = rows.iterator();
    }

    public boolean next() {
      if (!rows.hasNext()) {
        return false;
      }
      current = rows.next();
      return true;
    }

    public Object get() {
      return current;
    }

    public void close() {
    }
  }
}

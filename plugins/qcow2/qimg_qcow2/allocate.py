"""Where guest writes go: the write side of QEMU's qcow2-cluster.c, as the driver's
``allocator``.

Clusters the image owns are written in place; the others get new clusters (copy-on-write of the
parts not written, from this layer and its backing file; with extended L2, only the subclusters
touched). Zero clusters and discards change L2 entries and drop references; compressed clusters
are packed one after another. L2 tables are allocated (or made private) on the way.
"""
from __future__ import annotations

from array import array

from qimg.blockstatus import ALLOCATED, ZERO
from qimg.errors import QimgError
from qimg.tables import same_run

from . import structs as S
from .cluster import ALL_ALLOC, ALL_ZERO, UNALLOC, ZEROES

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from .driver import Qcow2Format

#: overlap.py's bits for the structures a call site's own write may legitimately touch
_OL_ACTIVE_L1, _OL_ACTIVE_L2 = 1 << 1, 1 << 2
_same_run = same_run


class ClusterAllocator:
    """Writes, zeroes, discards and compressed clusters of one writable image (single-threaded)."""

    def __init__(self, drv: "Qcow2Format") -> None:
        self.drv = drv
        self.file = drv.file
        self.map = drv.clusters
        self.refcounts = drv.refcounts
        self.cluster_bits = drv.cluster_bits
        self.cluster_size = drv.cluster_size
        self.l2_bits = drv.l2_bits
        self.l2_entries = drv.l2_entries
        self.l2_entry_size = drv.l2_entry_size
        self.extended_l2 = drv.extended_l2
        self.subcluster_size = drv.subcluster_size
        self.csize_shift = drv.csize_shift

    def l2_for_write(self, l1i: int) -> tuple[int, array]:
        """The L2 table for L1 index ``l1i``, allocated or made private (COPIED) if needed."""
        e = self.drv.l1[l1i]
        off = e & S.L1E_OFFSET_MASK
        if off and e & S.OFLAG_COPIED:
            return off, self.map.get_l2(off, l1i)
        new_off = self.refcounts.alloc(1)
        if new_off == 0:
            self.drv.corrupt("Preventing invalid allocation of L2 table at offset 0")
        try:
            tbl = array("Q", self.map.get_l2(off, l1i)) if off else array("Q", bytes(self.cluster_size))
            self.refcounts.cache.flush()
            # QEMU writes a new L2 table through its cache: checked as every L2 flush is
            self.drv.write_table(new_off, tbl, _OL_ACTIVE_L2)
            self.map.cache.put(new_off, tbl)
            self.drv.l1[l1i] = new_off | S.OFLAG_COPIED
            self.drv.write_l1(l1i, 1)
        except (QimgError, OSError):
            # as QEMU's l2_allocate: the L1 entry goes back and the new table is freed
            self.drv.l1[l1i] = e
            self.map.cache.drop(new_off)
            self.refcounts.free(new_off, self.cluster_size, discard=True)
            raise
        if off:
            # as QEMU: the old table loses its reference once the new one is in place
            self.refcounts.update(off, self.cluster_size, -1)
        return new_off, tbl

    def free_entry(self, e: int, punch: bool = False) -> None:
        """Drop one reference held by an L2 entry (normal, zero-allocated or compressed).

        ``punch``: a guest discard; clusters no longer used are discarded in the host file too,
        as QEMU passes discard requests down."""
        if e & S.OFLAG_COMPRESSED:
            self.drv.ccache = None
            first, n = self.map.compressed_clusters(e)
            self.refcounts.free(first, n * self.cluster_size, punch)
        else:
            host = e & S.L2E_OFFSET_MASK
            if not host or self.drv.data_file is not None:
                return
            if host & (self.cluster_size - 1):
                from .overlap import signal_corruption

                signal_corruption(self.drv, f"Cannot free unaligned cluster {S.chex(host)}", fatal=False)
                return
            self.refcounts.free(host, self.cluster_size, punch)

    def _can_write_in_place(self, e: int) -> bool:
        if e & S.OFLAG_COMPRESSED or not e & S.OFLAG_COPIED:
            return False
        if self.drv.data_file is not None:
            return True
        return bool(e & S.L2E_OFFSET_MASK)

    def write(self, offset: int, data: memoryview) -> None:
        """:meth:`write` below the block layer (no bitmap tracking): the driver's own writes."""
        self.drv.mark_dirty()
        cb = self.cluster_bits
        pos, total = 0, len(data)
        # where the host range of this request goes on: clusters to allocate right after
        # clusters written in place go there if free (QEMU's qcow2_alloc_clusters_at)
        follow = 0
        while pos < total:
            off = offset + pos
            gci = off >> cb
            l1i = gci >> self.l2_bits
            table_end = (l1i + 1) << (self.l2_bits + cb)
            end = min(offset + total, table_end)
            l2off, tbl = self.l2_for_write(l1i)
            i0 = gci & (self.l2_entries - 1)
            n = ((end - 1) >> cb) - gci + 1
            st = self.l2_entry_size // 8
            if st == 2:
                # QEMU's handle_copied/handle_alloc: an invalid entry in the request's range
                # (subclusters allocated in an unallocated cluster...) stops the write
                cmap = self.drv.clusters
                for i in range(i0, i0 + n):
                    if cmap.ext_invalid(tbl[2 * i], tbl[2 * i + 1]):
                        cmap.invalid_entry(l2off, i, write=True)
            if st == 1 and tbl[i0 : i0 + n].count(0) == n:
                # nothing allocated yet (the copy case): one run of new clusters
                self._write_alloc(tbl, l2off, i0, n, off, data[pos : end - offset], follow)
                pos = end - offset
                follow = 0
                continue
            k = 0
            while k < n:
                ent = tbl[(i0 + k) * st]
                inplace = self._can_write_in_place(ent)
                # group a run of clusters of the same kind
                j = k + 1
                while j < n and self._can_write_in_place(tbl[(i0 + j) * st]) == inplace:
                    j += 1
                rs = max(off, (gci + k) << cb)
                re = min(end, (gci + j) << cb)
                dv = data[rs - offset : re - offset]
                if inplace:
                    self._write_in_place(tbl, l2off, i0 + k, rs, dv)
                    last = tbl[(i0 + j - 1) * st] & S.L2E_OFFSET_MASK
                    follow = last + self.cluster_size if last and self.drv.data_file is None else 0
                else:
                    self._write_alloc(tbl, l2off, i0 + k, j - k, rs, dv, follow)
                    follow = 0
                k = j
            pos = end - offset

    def _write_in_place(self, tbl: array, l2off: int, i: int, goff: int, data: memoryview) -> None:
        """Write over clusters this image owns (COPIED, uncompressed); host runs coalesced."""
        cb, cs = self.cluster_bits, self.cluster_size
        dfile = self.drv.data_file or self.file
        st = self.l2_entry_size // 8
        pos, total = 0, len(data)
        while pos < total:
            g = goff + pos
            ci = i + ((g >> cb) - (goff >> cb))
            e = tbl[ci * st]
            host = e & S.L2E_OFFSET_MASK
            if host & (cs - 1):
                kind = "Preallocated zero" if e & S.OFLAG_ZERO and not self.extended_l2 else "Data"
                self.drv.corrupt(f"{kind} cluster offset {S.chex(host)} unaligned (guest offset: {S.chex(g)})")
            # contiguous host clusters
            k = 1
            maxk = ((goff + total - 1) >> cb) - (g >> cb) + 1
            if maxk > 1:
                k = _same_run(tbl[ci * st : (ci + maxk) * st : st], e, cs)
            n = min(total - pos, ((g >> cb) + k << cb) - g)
            chunk = data[pos : pos + n]
            self.drv.pre_write(0, host + (g & (cs - 1)), n, data_file=True)
            self.file.debug_event("write_aio")
            if self.extended_l2:
                # whole clusters in the middle go out in one write; partial ends need subcluster COW
                a = -(-g // cs) * cs
                b = ((g + n) // cs) * cs
                if b - a >= cs:
                    if a > g:
                        self._ext_fill_partial(tbl, ci, g, chunk[: a - g], host, dfile)
                    c0 = ci + ((a >> cb) - (g >> cb))
                    self.drv.write_stored(dfile, host + (a - ((g >> cb) << cb)), a, chunk[a - g : b - g])
                    for c in range(c0, c0 + ((b - a) >> cb)):
                        tbl[2 * c + 1] = ALL_ALLOC
                    if g + n > b:
                        self._ext_fill_partial(tbl, ci + ((b >> cb) - (g >> cb)), b, chunk[b - g :], host, dfile)
                else:
                    self._ext_fill_partial(tbl, ci, g, chunk, host, dfile)
            else:
                self.drv.write_stored(dfile, host + (g & (cs - 1)), g, chunk)
                if e & S.OFLAG_ZERO:
                    # a preallocated zero cluster becomes data: fill the rest with zeroes
                    for c in range(k):
                        ce = tbl[(ci + c) * st]
                        if ce & S.OFLAG_ZERO:
                            self._zero_rest_of_cluster(dfile, ce & S.L2E_OFFSET_MASK, (g >> cb) + c, g, g + n)
                            tbl[(ci + c) * st] = ce & ~S.OFLAG_ZERO
                    self.map.cache.mark_dirty(l2off)
            if self.extended_l2:
                self.map.cache.mark_dirty(l2off)
            pos += n

    def _zero_rest_of_cluster(self, dfile, host: int, gci: int, ws: int, we: int) -> None:
        cs = self.cluster_size
        cstart = gci << self.cluster_bits
        a, b = max(ws, cstart), min(we, cstart + cs)
        if a > cstart:
            self.drv.write_stored(dfile, host, cstart, bytes(a - cstart))
        if b < cstart + cs:
            self.drv.write_stored(dfile, host + (b - cstart), b, bytes(cstart + cs - b))

    def _ext_fill_partial(self, tbl: array, ci: int, g: int, chunk: memoryview, host: int, dfile) -> None:
        """Extended L2 in-place write: COW partially written subclusters that are not data yet."""
        cb, cs, scs = self.cluster_bits, self.cluster_size, self.subcluster_size
        pos, total = 0, len(chunk)
        while pos < total:
            gg = g + pos
            c = ci + ((gg >> cb) - (g >> cb))
            cstart = (gg >> cb) << cb
            n = min(total - pos, cstart + cs - gg)
            e = tbl[2 * c]
            h = e & S.L2E_OFFSET_MASK if (e & S.L2E_OFFSET_MASK or self.drv.data_file is None) else 0
            bm = tbl[2 * c + 1]
            s0 = (gg - cstart) // scs
            s1 = (gg - cstart + n - 1) // scs
            ws, we = gg, gg + n
            # widen to whole subclusters, filling from the current guest view where needed
            a = cstart + s0 * scs
            b = cstart + (s1 + 1) * scs
            buf = bytearray(b - a)
            mv = memoryview(buf)
            if a < ws and not ((bm >> s0) & 1 and not (bm >> (32 + s0)) & 1):
                self.drv.read_layer(a, mv[: ws - a])
            elif a < ws:
                self.drv.read_stored(dfile, h + (a - cstart), a, mv[: ws - a])
            if we < b and not ((bm >> s1) & 1 and not (bm >> (32 + s1)) & 1):
                self.drv.read_layer(we, mv[we - a :])
            elif we < b:
                self.drv.read_stored(dfile, h + (we - cstart), we, mv[we - a :])
            mv[ws - a : we - a] = chunk[pos : pos + n]
            self.drv.write_stored(dfile, h + (a - cstart), a, mv)
            mask = ((1 << (s1 + 1)) - 1) ^ ((1 << s0) - 1)
            tbl[2 * c + 1] = (bm | mask) & ~(mask << 32)
            pos += n
        del host

    def _cow_reads_zero(self, old: array, first_g: int, regions: tuple[tuple[int, int], ...]) -> bool:
        """QEMU's is_zero_cow: each part of the new clusters that is not written reads as zero
        in one block-status answer (a zero cluster here, or a run the backing chain reports as
        zero; a part that crosses the backing file's or the image's end does not count)."""
        cb = self.cluster_bits
        for start, length in regions:
            if not length:
                continue
            if start + length > self.drv.size:
                return False  # QEMU's status stops at the image's end: not one zero answer
            e = old[((start >> cb) - (first_g >> cb))]
            if e & S.OFLAG_COMPRESSED:
                return False  # (its low bits are part of the compressed descriptor, not flags)
            if e & S.OFLAG_ZERO:
                continue
            if e & S.L2E_OFFSET_MASK:
                return False
            b = self.drv.backing
            if b is None or start >= b.size:
                continue
            if start + length > b.size:
                return False
            st = b.chain_status(start, length)
            if not st.flags & ZERO or st.length < length:
                return False
        return True

    def _write_alloc(self, tbl: array, l2off: int, i: int, n: int, goff: int, data: memoryview,
                     follow: int = 0) -> None:
        """Allocate ``n`` new contiguous clusters for L2 indexes i..i+n-1 and write them whole;
        ``follow``: the host offset where the request's host range goes on, tried first."""
        cb = self.cluster_bits
        if follow and self.drv.data_file is None:
            got = self.refcounts.alloc_at(follow, n)
            if got:
                if got < n:
                    # the rest is a new host range, allocated where the allocator finds room
                    cut = ((goff >> cb) + got) << cb
                    self._write_alloc_at(tbl, l2off, i, got, goff, data[: cut - goff], follow)
                    self._write_alloc(tbl, l2off, i + got, n - got, cut, data[cut - goff :])
                else:
                    self._write_alloc_at(tbl, l2off, i, n, goff, data, follow)
                return
        self._write_alloc_at(tbl, l2off, i, n, goff, data, None)

    def _write_alloc_at(self, tbl: array, l2off: int, i: int, n: int, goff: int, data: memoryview,
                        host: int | None) -> None:
        """:meth:`_write_alloc` once the host clusters are known (``host``) or to be found (None)."""
        cb, cs = self.cluster_bits, self.cluster_size
        st = self.l2_entry_size // 8
        first_g = (goff >> cb) << cb
        last_end = first_g + n * cs
        head = goff - first_g
        tail = last_end - (goff + len(data))
        old = tbl[i * st : (i + n) * st : st]
        if self.drv.data_file is not None:
            host = first_g  # external data files map guest offsets 1:1
        elif host is None:
            host = self.refcounts.alloc(n)
        sub = self.extended_l2 and not any(e & (S.OFLAG_COMPRESSED | S.L2E_OFFSET_MASK) for e in old)
        if sub:
            # as QEMU: only the touched subclusters get allocated; the others keep their state
            scs = self.subcluster_size
            head = (goff - first_g) % scs
            tail = (-(goff + len(data) - first_g)) % scs
            host_w = host + (goff - head - first_g)
            first_g = goff - head
        else:
            host_w = host
        dfile = self.drv.data_file or self.file
        self.drv.pre_write(0, host_w, head + len(data) + tail, data_file=True)
        if ((head or tail) and not sub and self.drv.crypt is None
                and self._cow_reads_zero(old, first_g, ((first_g, head), (goff + len(data), tail)))):
            # as QEMU (handle_alloc_space): when nothing below shows through the parts not
            # written, the new clusters are zeroed in the file (no zero data is written) and
            # only the data goes out, so the file is as sparse as qemu-img leaves it
            self.file.debug_event("cluster_alloc_space")
            dfile.write_zeroes(host_w, n * cs)
            self.file.debug_event("write_aio")
            dfile.pwrite(host_w + head, data)
        else:
            self.file.debug_event("write_aio")
            bufs: list = []
            if head:
                hb = bytearray(head)
                self.drv.read_layer(first_g, memoryview(hb))
                bufs.append(hb)
            bufs.append(data)
            if tail:
                tb = bytearray(tail)
                self.drv.read_layer(goff + len(data), memoryview(tb))
                bufs.append(tb)
            if self.drv.crypt is not None:
                whole = b"".join(bufs) if len(bufs) > 1 else data
                self.drv.write_stored(dfile, host_w, first_g, whole)
            elif hasattr(dfile, "pwritev") and len(bufs) > 1:
                dfile.pwritev(host_w, bufs)
            else:
                p = host_w
                for b in bufs:
                    dfile.pwrite(p, b)
                    p += len(b)
        c0 = goff >> cb
        if st == 1:
            first = host | S.OFLAG_COPIED
            tbl[i : i + n] = array("Q", range(first, first + n * cs, cs))
        for k in range(n if st != 1 else 0):
            tbl[(i + k) * st] = (host + k * cs) | S.OFLAG_COPIED
            if sub:
                cstart = (c0 + k) << cb
                a = max(goff, cstart) - cstart
                b = min(goff + len(data), cstart + cs) - cstart
                s0, s1 = a // self.subcluster_size, (b - 1) // self.subcluster_size
                mask = ((1 << (s1 + 1)) - 1) ^ ((1 << s0) - 1)
                bm = tbl[(i + k) * st + 1]
                tbl[(i + k) * st + 1] = (bm | mask) & ~(mask << 32)
            elif self.extended_l2:
                tbl[(i + k) * st + 1] = ALL_ALLOC
        self.map.cache.mark_dirty(l2off)
        if old.count(0) == len(old):
            return
        for e in old:
            if e & S.OFLAG_COMPRESSED or e & S.L2E_OFFSET_MASK:
                self.free_entry(e)

    def zero_units(self, a: int, b: int, unmap: bool) -> None:
        if self.drv.header.version < 3:
            self.discard_range(a, b, full=False)
        else:
            self.drv.mark_dirty()
            self._zeroize(a, b, unmap)

    def _zero_partial(self, offset: int, length: int, unmap: bool) -> None:
        unit = self.subcluster_size if self.extended_l2 else self.cluster_size
        u0 = offset - offset % unit
        u1 = min(u0 + unit, self.drv.size)
        end = offset + length
        if self._reads_zero(u0, offset - u0) and self._reads_zero(end, u1 - end):
            kind = self.map.extent(u0, u1 - u0, merge_compressed=False)[0]
            if kind in (UNALLOC, ZEROES):
                self.zero_units(u0, u1, unmap)
                return
        self._write_zero_bytes(offset, length)

    def _reads_zero(self, offset: int, length: int) -> bool:
        """Block status says zero (zero clusters, or unallocated down the whole chain)."""
        end = offset + length
        while offset < end:
            kind, n, _h = self.map.extent(offset, end - offset)
            if kind == UNALLOC:
                if self.drv.backing is not None:
                    st = self.drv.backing.chain_status(offset, n)
                    n = st.length
                    if st.flags & ALLOCATED and not st.flags & ZERO:
                        return False
            elif kind != ZEROES:
                return False
            offset += n
        return True

    def _write_zero_bytes(self, offset: int, length: int) -> None:
        from qimg.protocol import ZERO_CHUNK

        end = offset + length
        while offset < end:
            n = min(len(ZERO_CHUNK), end - offset)
            self.drv.write(offset, memoryview(ZERO_CHUNK)[:n])
            offset += n

    def _zeroize(self, a: int, b: int, unmap: bool) -> None:
        cb, cs = self.cluster_bits, self.cluster_size
        pos = a
        while pos < b:
            gci = pos >> cb
            l1i = gci >> self.l2_bits
            tend = min(b, (l1i + 1) << (self.l2_bits + cb))
            l2off, tbl = self.l2_for_write(l1i)
            while pos < tend:
                gci = pos >> cb
                i = gci & (self.l2_entries - 1)
                cend = min(tend, (gci + 1) << cb)
                if self.extended_l2:
                    e, bm = tbl[2 * i], tbl[2 * i + 1]
                    if cend - pos == cs or (cend == self.drv.size and pos & (cs - 1) == 0):
                        do_unmap = bool(e & S.OFLAG_COMPRESSED) or (unmap and bool(e & S.L2E_OFFSET_MASK))
                        ne = 0 if do_unmap else e
                        nb = ALL_ZERO
                        if e & S.OFLAG_COMPRESSED:
                            ne = 0
                        if (ne, nb) != (e, bm):
                            tbl[2 * i], tbl[2 * i + 1] = ne, nb
                            if do_unmap:
                                self.free_entry(e, punch=True)
                    else:
                        if e & S.OFLAG_COMPRESSED:
                            # cannot zero part of a compressed cluster: write zero bytes instead
                            self.map.cache.mark_dirty(l2off)
                            self._write_zero_bytes(pos, cend - pos)
                            tbl = self.map.get_l2(self.drv.l1[l1i] & S.L1E_OFFSET_MASK)
                            pos = cend
                            continue
                        scs = self.subcluster_size
                        s0 = (pos & (cs - 1)) // scs
                        s1 = ((cend - 1) & (cs - 1)) // scs
                        mask = ((1 << (s1 + 1)) - 1) ^ ((1 << s0) - 1)
                        tbl[2 * i + 1] = (bm & ~mask) | (mask << 32)
                else:
                    e = tbl[i]
                    do_unmap = bool(e & S.OFLAG_COMPRESSED) or (
                        unmap and bool(e & S.L2E_OFFSET_MASK or (self.drv.data_file and e & S.OFLAG_COPIED)))
                    ne = (0 if do_unmap else e) | S.OFLAG_ZERO
                    if ne != e:
                        tbl[i] = ne
                        if do_unmap:
                            self.free_entry(e, punch=True)
                pos = cend
            self.map.cache.mark_dirty(l2off)

    def discard_range(self, a: int, b: int, full: bool) -> None:
        cb = self.cluster_bits
        pos = a
        while pos < b:
            gci = pos >> cb
            l1i = gci >> self.l2_bits
            tend = min(b, (l1i + 1) << (self.l2_bits + cb))
            # as QEMU, the L2 table is allocated (or made private) even if nothing changes in it
            l2off, tbl = self.l2_for_write(l1i)
            st = self.l2_entry_size // 8
            changed = False
            while pos < tend:
                gci = pos >> cb
                i = gci & (self.l2_entries - 1)
                e = tbl[i * st]
                allocated = bool(e & (S.OFLAG_COMPRESSED | S.L2E_OFFSET_MASK)) or (
                    self.drv.data_file is not None and bool(e & S.OFLAG_COPIED))
                if full:
                    ne, nb = 0, 0
                elif self.drv.backing is not None or allocated:
                    if self.extended_l2:
                        ne, nb = 0, ALL_ZERO
                    else:
                        ne, nb = (S.OFLAG_ZERO if self.drv.header.version >= 3 else 0), 0
                else:
                    pos = (gci + 1) << cb
                    continue
                pos = (gci + 1) << cb
                if e == ne and (not self.extended_l2 or tbl[i * st + 1] == nb):
                    continue  # (an entry left as it was does not dirty the table)
                changed = True
                tbl[i * st] = ne
                if self.extended_l2:
                    tbl[i * st + 1] = nb
                if allocated:
                    self.free_entry(e, punch=True)
            if changed:
                self.map.cache.mark_dirty(l2off)

    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        """As QEMU: whole (sub)clusters become zero clusters (v3) or are dropped (v2 without a
        backing file); a partial one is zeroed whole when the rest of it already reads as zeroes
        and nothing is allocated there, else zero bytes are written."""
        unit = self.subcluster_size if self.extended_l2 else self.cluster_size
        end = offset + length
        a = -(-offset // unit) * unit
        b = end // unit * unit
        if end == self.drv.size and b < end:
            b = end  # the image tail may be partial
        if self.drv.header.version < 3 and self.drv.backing is not None:
            self._write_zero_bytes(offset, length)
            return
        if a > b:  # inside one unit
            self._zero_partial(offset, length, unmap)
            return
        if a > offset:
            self._zero_partial(offset, a - offset, unmap)
        if a < b:
            self.zero_units(a, b, unmap)
        if b < end:
            self._zero_partial(b, end - b, unmap)

    def discard(self, offset: int, length: int) -> None:
        """As QEMU: whole clusters are dropped (zero clusters where the backing file or the
        cluster's own data would show through); a v2 image with a backing file ignores it."""
        cs = self.cluster_size
        a = (offset + cs - 1) // cs * cs
        b = (offset + length) // cs * cs
        if offset + length == self.drv.size:
            b = offset + length
        if self.drv.header.version < 3 and self.drv.backing is not None:
            return  # v2 cannot hide the backing file: QEMU ignores the request
        if a < b:
            self.drv.mark_dirty()
            self.discard_range(a, b, full=False)

    def write_compressed(self, offset: int, out: bytes) -> None:
        """Store the compressed cluster ``out`` (smaller than a cluster) for the cluster at guest
        ``offset``: packed after the last one (QEMU's qcow2_alloc_compressed_cluster_offset)."""
        self.drv.mark_dirty()
        gci = offset >> self.cluster_bits
        l1i = gci >> self.l2_bits
        l2off, tbl = self.l2_for_write(l1i)
        i = gci & (self.l2_entries - 1)
        st = self.l2_entry_size // 8
        old = tbl[i * st]
        self.drv.ccache = None
        host = self.refcounts.alloc_bytes(len(out))
        # written as it is: the file may end mid-sector (qemu-img 10.0's rebase -c leaves it so);
        # a stream of compressed writes (convert -c) ends with an empty one, which rounds the
        # file up to whole sectors (compress.write_compressed)
        self.drv.pre_write(0, host, len(out), data_file=True)
        self.file.pwrite(host, out)
        nsec = ((host + len(out) - 1) >> 9) - (host >> 9)
        tbl[i * st] = host | S.OFLAG_COMPRESSED | (nsec << self.csize_shift)
        if self.extended_l2:
            tbl[i * st + 1] = 0
        self.map.cache.mark_dirty(l2off)
        if old & (S.OFLAG_COMPRESSED | S.L2E_OFFSET_MASK):
            self.free_entry(old)
